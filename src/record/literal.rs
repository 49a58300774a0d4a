//! Safe parser for the dict-shaped log lines written by Python chat consumers.
//!
//! The consumers log every chat event either as `str(dict)` (a Python repr such as
//! `{'message': '회의 시작할까요', 'offset': 5}`) or as JSON. The original tooling read
//! these lines back with Python's `eval()`, which runs whatever code a log file holds.
//! This module is the safe replacement for that `eval()`: a strict parser for the union
//! of the Python-literal subset that `repr` produces and JSON. It never executes
//! anything, never panics, never recurses (nesting is bounded by [`Limits::max_depth`]),
//! runs in linear time, and cleans strings as it decodes them: lone UTF-16 surrogates,
//! invalid UTF-8 and control characters other than `\n`/`\t` are dropped and counted in
//! [`Drops`].
//!
//! [`to_python`] and [`to_json`] render values back, the way Python's `repr` and
//! `json.dumps` would; they exist for round-trip tests and test fixtures.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

/// A parsed literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Python `None`, JSON `null`.
    Null,
    /// `True`/`False` (Python) or `true`/`false` (JSON).
    Bool(bool),
    /// An integer that fits in `i64` (decimal, or `0x`/`0o`/`0b`).
    Int(i64),
    /// A decimal integer that does not fit in `i64`: an optional `-` then the digits,
    /// without `+`, underscores or leading zeros.
    BigInt(String),
    /// A float, including `NaN`, `Infinity`, `-Infinity` and overflowing literals
    /// such as `1e999` (which become infinite, as in Python).
    Float(f64),
    /// A string; also the UTF-8 decoding of a `b'...'` bytes literal.
    Str(String),
    /// A list `[...]` or a tuple `(...)`.
    List(Vec<Value>),
    /// A dict in insertion order. For duplicate keys the last value wins and sits at
    /// the position of the key's first occurrence (Python semantics).
    Dict(Vec<(String, Value)>),
}

/// Characters removed while decoding strings, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Surrogates that were not a high+low pair: `\uXXXX`/`\UXXXXXXXX` escapes, or in UTF-8 form
    /// (`ED A0..BF xx`, Python's `surrogatepass`).
    pub lone_surrogates: u64,
    /// Bytes of the input (or of a bytes literal) that were not valid UTF-8.
    pub invalid_bytes: u64,
    /// Control characters (U+0000–U+001F except `\n` and `\t`, U+007F, U+0080–U+009F),
    /// whether written raw or as an escape.
    pub control_chars: u64,
}

impl Drops {
    /// The number of dropped items of every kind together.
    pub fn total(&self) -> u64 {
        self.lone_surrogates
            .saturating_add(self.invalid_bytes)
            .saturating_add(self.control_chars)
    }

    /// Adds the counts of `other` to `self`.
    pub fn add(&mut self, other: &Drops) {
        self.lone_surrogates = self.lone_surrogates.saturating_add(other.lone_surrogates);
        self.invalid_bytes = self.invalid_bytes.saturating_add(other.invalid_bytes);
        self.control_chars = self.control_chars.saturating_add(other.control_chars);
    }
}

/// Limits that keep hostile input cheap.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The deepest nesting of dicts, lists and tuples accepted (default 64); deeper
    /// input fails with [`ErrorKind::TooDeep`]. The parser itself never recurses, but
    /// dropping, cloning, comparing and rendering a [`Value`] do, so keep this modest.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 64 }
    }
}

/// Why a parse failed: a stable short code plus the byte offset in the input where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Offset into the whole input slice (not relative to `start`). A value or string
    /// cut off by the end of input reports the input's length.
    pub offset: usize,
}

/// The kinds of parse failure; [`ErrorKind::code`] gives each a stable short code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input ended before the value did.
    UnexpectedEof,
    /// A byte that cannot appear here (also names such as `nan` or `__import__`).
    UnexpectedChar,
    /// A string ran into a raw newline or the end of input before its closing quote.
    UnterminatedString,
    /// A malformed `\x`, `\u` or `\U` escape, or a code point above U+10FFFF.
    BadEscape,
    /// A malformed number, or a `0x`/`0o`/`0b` integer that does not fit in `i64`.
    BadNumber,
    /// A dict key that is not a string.
    NonStringKey,
    /// Nesting deeper than [`Limits::max_depth`].
    TooDeep,
    /// [`parse_dict`] found a value that is not a dict.
    ExpectedDict,
}

impl ErrorKind {
    /// The stable short code, e.g. `"unterminated_string"`.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorKind::UnexpectedEof => "unexpected_eof",
            ErrorKind::UnexpectedChar => "unexpected_char",
            ErrorKind::UnterminatedString => "unterminated_string",
            ErrorKind::BadEscape => "bad_escape",
            ErrorKind::BadNumber => "bad_number",
            ErrorKind::NonStringKey => "non_string_key",
            ErrorKind::TooDeep => "too_deep",
            ErrorKind::ExpectedDict => "expected_dict",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self.kind.code().replace('_', " ");
        write!(f, "{what} at byte {}", self.offset)
    }
}

impl std::error::Error for ParseError {}

/// The parser's internal error: boxed, so that `Result<Value, Fail>` is no bigger than a
/// `Value` and the hot path moves results cheaply; only a failing parse allocates it.
#[derive(Debug)]
struct Fail(Box<ParseError>);

impl Fail {
    fn new(kind: ErrorKind, offset: usize) -> Fail {
        Fail(Box::new(ParseError { kind, offset }))
    }
}

impl From<Fail> for ParseError {
    fn from(fail: Fail) -> ParseError {
        *fail.0
    }
}

/// Parses one value starting at `input[start]` (leading whitespace skipped). Returns the value and the byte offset just after it. Never panics, never recurses deeper than limits.max_depth (return TooDeep), runs in linear time.
///
/// Whatever follows the value is left alone: it is the caller's business.
pub fn parse_value(
    input: &[u8],
    start: usize,
    limits: &Limits,
    drops: &mut Drops,
) -> Result<(Value, usize), ParseError> {
    let mut p = Parser::new(input, start, drops);
    let value = p.parse(limits.max_depth)?;
    Ok((value, p.pos))
}

/// Like parse_value but the value must be a dict (ExpectedDict otherwise); returns its entries.
///
/// The check happens at the first non-whitespace byte, so a non-dict is rejected
/// without being parsed.
pub fn parse_dict(
    input: &[u8],
    start: usize,
    limits: &Limits,
    drops: &mut Drops,
) -> Result<(Vec<(String, Value)>, usize), ParseError> {
    let mut p = Parser::new(input, start, drops);
    let not_dict = p.err(ErrorKind::ExpectedDict);
    match p.peek_token()? {
        b'{' => match p.parse(limits.max_depth)? {
            Value::Dict(entries) => Ok((entries, p.pos)),
            _ => Err(not_dict.into()),
        },
        _ => Err(p.err(ErrorKind::ExpectedDict).into()),
    }
}

/// Dicts up to this size find duplicate keys by a linear scan; larger ones get a hash index.
const DICT_SCAN_MAX: usize = 16;

/// Bytes that end a bulk run inside a quoted string: the quote, a backslash, ASCII
/// control bytes other than tab (a raw newline is an error, the rest are dropped), DEL,
/// and 0xC2 (the lead byte of the C1 controls U+0080–U+009F).
const fn stop_table(quote: u8) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b == quote || b == b'\\' || (b < 0x20 && b != b'\t') || b == 0x7f || b == 0xc2;
        i += 1;
    }
    t
}

/// Indexed by whether the quote is `"`.
static STOP: [[bool; 256]; 2] = [stop_table(b'\''), stop_table(b'"')];

/// The first byte of `rest` that ends a run (`table[b]`): 16 bytes at a time with SSE2 (part
/// of every x86-64 CPU), the rest 8 at a time.
#[cfg(target_arch = "x86_64")]
fn find_stop(rest: &[u8], table: &[bool; 256], quote: u8) -> Option<usize> {
    use std::arch::x86_64::{
        __m128i, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let mut at = 0;
    // SAFETY: SSE2 is in the x86-64 baseline, so these intrinsics are always available; each
    // load reads the 16 bytes at `at..at + 16`, inside `rest`, and tolerates any alignment.
    unsafe {
        let splat = |b: u8| _mm_set1_epi8(b as i8);
        let (q, bs, del, c2, tab, x1f) = (
            splat(quote),
            splat(b'\\'),
            splat(0x7f),
            splat(0xc2),
            splat(b'\t'),
            splat(0x1f),
        );
        while at + 16 <= rest.len() {
            let v = _mm_loadu_si128(rest.as_ptr().add(at).cast::<__m128i>());
            // Bytes up to 0x1F (max(v, 0x1F) == 0x1F), except tab.
            let control = _mm_andnot_si128(
                _mm_cmpeq_epi8(v, tab),
                _mm_cmpeq_epi8(_mm_max_epu8(v, x1f), x1f),
            );
            let stops = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, bs)),
                _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, del), _mm_cmpeq_epi8(v, c2)),
                    control,
                ),
            );
            let mask = _mm_movemask_epi8(stops) as u32;
            if mask != 0 {
                return Some(at + mask.trailing_zeros() as usize);
            }
            at += 16;
        }
    }
    find_stop_words(&rest[at..], table, quote).map(|i| at + i)
}

#[cfg(not(target_arch = "x86_64"))]
fn find_stop(rest: &[u8], table: &[bool; 256], quote: u8) -> Option<usize> {
    find_stop_words(rest, table, quote)
}

/// [`find_stop`] 8 bytes at a time: a word with no quote, backslash, DEL, 0xC2 or byte below
/// 0x20 holds no stop byte.
fn find_stop_words(rest: &[u8], table: &[bool; 256], quote: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // Non-zero exactly when some byte of `v` is zero (resp. below `n`, for n <= 0x80).
    let below = |v: u64, n: u8| v.wrapping_sub(LO * u64::from(n)) & !v & HI;
    let has = |v: u64, b: u8| below(v ^ (LO * u64::from(b)), 1);
    let mut words = rest.chunks_exact(8);
    let mut at = 0;
    for word in words.by_ref() {
        let v = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let maybe = has(v, quote) | has(v, b'\\') | has(v, 0x7f) | has(v, 0xc2) | below(v, 0x20);
        if maybe != 0
            && let Some(i) = word.iter().position(|&b| table[usize::from(b)])
        {
            return Some(at + i);
        }
        at += 8;
    }
    let tail = words
        .remainder()
        .iter()
        .position(|&b| table[usize::from(b)]);
    tail.map(|i| at + i)
}

/// True for the characters every decoded string loses.
fn is_dropped_control(c: char) -> bool {
    matches!(c, '\0'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// Appends `bytes` to `out`, dropping invalid UTF-8 and control characters; a surrogate in
/// UTF-8 form is a lone surrogate, or with its partner the character they encode
/// ([`super::clean::utf8_surrogate`]).
fn push_clean(out: &mut String, mut bytes: &[u8], drops: &mut Drops) {
    loop {
        let (valid, bad) = match std::str::from_utf8(bytes) {
            Ok(s) => (s, 0),
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                let valid = std::str::from_utf8(valid).unwrap_or_default();
                (valid, e.error_len().unwrap_or(rest.len()))
            }
        };
        if valid.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
            for c in valid.chars() {
                match is_dropped_control(c) {
                    true => drops.control_chars += 1,
                    false => out.push(c),
                }
            }
        } else {
            out.push_str(valid);
        }
        if bad == 0 {
            return;
        }
        let rest = bytes.get(valid.len()..).unwrap_or_default();
        match super::clean::utf8_surrogate(rest) {
            Some((len, pair)) => {
                match pair {
                    Some(c) => out.push(c),
                    None => drops.lone_surrogates += 1,
                }
                bytes = rest.get(len..).unwrap_or_default();
            }
            None => {
                drops.invalid_bytes += bad as u64;
                bytes = rest.get(bad..).unwrap_or_default();
            }
        }
    }
}

/// Where the decoded contents of a string literal go: a `String` for `'...'`, raw bytes
/// (decoded as UTF-8 at the end) for `b'...'`.
trait Sink {
    /// Bytes literals have no `\u`/`\U` escapes.
    const BYTES: bool;
    /// A raw run from the input (no quote, backslash, control byte or C1 character).
    fn run(&mut self, run: &[u8], drops: &mut Drops);
    /// A character produced by an escape (or a backslash kept literally).
    fn ch(&mut self, c: char, drops: &mut Drops);
    /// The value of a `\xNN` or octal escape: a code point in a str, a byte in bytes.
    fn byte(&mut self, v: u32, drops: &mut Drops);
}

struct StrSink(String);

impl Sink for StrSink {
    const BYTES: bool = false;
    fn run(&mut self, run: &[u8], drops: &mut Drops) {
        // simdutf8: std's validation was 8% of extract on Hangul text.
        match simdutf8::basic::from_utf8(run) {
            Ok(s) if self.0.is_empty() => self.0 = s.to_owned(), // exact-size allocation
            Ok(s) => self.0.push_str(s),
            Err(_) => push_clean(&mut self.0, run, drops),
        }
    }
    fn ch(&mut self, c: char, drops: &mut Drops) {
        match is_dropped_control(c) {
            true => drops.control_chars += 1,
            false => self.0.push(c),
        }
    }
    fn byte(&mut self, v: u32, drops: &mut Drops) {
        self.ch(char::from_u32(v).unwrap_or_default(), drops);
    }
}

struct ByteSink(Vec<u8>);

impl Sink for ByteSink {
    const BYTES: bool = true;
    fn run(&mut self, run: &[u8], _: &mut Drops) {
        self.0.extend_from_slice(run);
    }
    fn ch(&mut self, c: char, _: &mut Drops) {
        self.0.extend(c.encode_utf8(&mut [0; 4]).bytes());
    }
    fn byte(&mut self, v: u32, _: &mut Drops) {
        self.0.push((v & 0xff) as u8);
    }
}

/// Reads exactly `n` hex digits at `input[at..]`.
fn hex_at(input: &[u8], at: usize, n: usize) -> Option<u32> {
    let digits = input.get(at..at.checked_add(n)?)?;
    let hex = |b: &u8| char::from(*b).to_digit(16);
    digits.iter().try_fold(0, |acc, b| Some(acc * 16 + hex(b)?))
}

/// Reads a run of digits in `radix` with Python's underscore rule (an underscore only
/// between digits, or right after a `0x`/`0o`/`0b` prefix). Returns the end offset and
/// the digit count; `None` for a misplaced underscore.
fn digit_group(input: &[u8], mut i: usize, radix: u32) -> Option<(usize, usize)> {
    let (mut digits, mut after_underscore) = (0, false);
    while let Some(&b) = input.get(i) {
        if char::from(b).is_digit(radix) {
            (digits, after_underscore) = (digits + 1, false);
        } else if b == b'_' {
            if after_underscore || (digits == 0 && radix == 10) {
                return None;
            }
            after_underscore = true;
        } else {
            break;
        }
        i += 1;
    }
    (!after_underscore).then_some((i, digits))
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn ident_len(s: &[u8]) -> usize {
    s.iter().position(|&b| !is_ident_byte(b)).unwrap_or(s.len())
}

/// The digits of a number literal, as chars, without underscores.
fn digit_chars(s: &[u8]) -> impl Iterator<Item = char> + Clone + '_ {
    s.iter().filter(|&&b| b != b'_').map(|&b| char::from(b))
}

/// A dict's hash index, built only once it outgrows [`DICT_SCAN_MAX`].
type Index = Option<Box<HashMap<String, usize>>>;

/// An open container on the parser's explicit stack.
enum Frame {
    /// Items and the closing bracket.
    List(Vec<Value>, u8),
    /// Entries, their index, and the key whose value is being parsed.
    Dict(Vec<(String, Value)>, Index, String),
}

/// Inserts with Python's duplicate-key semantics, in linear time overall.
fn dict_insert(entries: &mut Vec<(String, Value)>, index: &mut Index, key: String, value: Value) {
    let existing = match index {
        Some(map) => map.get(&key).copied(),
        None => entries.iter().position(|(k, _)| *k == key),
    };
    if let Some(slot) = existing.and_then(|i| entries.get_mut(i)) {
        slot.1 = value;
        return;
    }
    if let Some(map) = index {
        map.insert(key.clone(), entries.len());
    }
    entries.push((key, value));
    if index.is_none() && entries.len() > DICT_SCAN_MAX {
        let keys = entries.iter().enumerate().map(|(i, (k, _))| (k.clone(), i));
        *index = Some(Box::new(keys.collect()));
    }
}

struct Parser<'a, 'd> {
    input: &'a [u8],
    pos: usize,
    drops: &'d mut Drops,
}

impl<'a, 'd> Parser<'a, 'd> {
    fn new(input: &'a [u8], start: usize, drops: &'d mut Drops) -> Self {
        Parser {
            input,
            pos: start.min(input.len()),
            drops,
        }
    }

    fn err(&self, kind: ErrorKind) -> Fail {
        Fail::new(kind, self.pos)
    }

    fn end_err(&self, kind: ErrorKind) -> Fail {
        Fail::new(kind, self.input.len())
    }

    /// Skips whitespace and returns the next byte without consuming it.
    fn peek_token(&mut self) -> Result<u8, Fail> {
        while let Some(&b) = self.input.get(self.pos) {
            if !matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                return Ok(b);
            }
            self.pos += 1;
        }
        Err(self.end_err(ErrorKind::UnexpectedEof))
    }

    /// Parses a string literal if one starts here (`b` is the byte at `self.pos`).
    fn try_string(&mut self, b: u8) -> Option<Result<String, Fail>> {
        let bytes = self.string_at(b)?;
        if b != b'\'' && b != b'"' {
            self.pos += 1; // the prefix
        }
        if !bytes {
            let mut sink = StrSink(String::new());
            return Some(self.scan_string(&mut sink).map(|()| sink.0));
        }
        let mut sink = ByteSink(Vec::new());
        Some(self.scan_string(&mut sink).map(|()| {
            let mut s = String::with_capacity(sink.0.len());
            push_clean(&mut s, &sink.0, self.drops);
            s
        }))
    }

    /// Whether a string literal starts here (`b` is the byte at `self.pos`): `Some(true)` for a
    /// bytes literal `b'...'`, `Some(false)` for `'...'`, `"..."` or `u'...'`.
    fn string_at(&self, b: u8) -> Option<bool> {
        let next_is_quote = matches!(self.input.get(self.pos + 1), Some(b'\'' | b'"'));
        match b {
            b'\'' | b'"' => Some(false),
            b'u' | b'U' if next_is_quote => Some(false),
            b'b' | b'B' if next_is_quote => Some(true),
            _ => None,
        }
    }

    /// The whole grammar, iteratively: containers live on `stack`, never on the call stack.
    fn parse(&mut self, max_depth: usize) -> Result<Value, Fail> {
        // The innermost open container is `top`; only its ancestors go on `stack`, so
        // a flat record never allocates a stack.
        let mut stack: Vec<Frame> = Vec::new();
        let mut top: Option<Frame> = None;
        loop {
            // At a value position.
            let b = self.peek_token()?;
            let mut value = match b {
                b'{' | b'[' | b'(' => {
                    if stack.len() + usize::from(top.is_some()) >= max_depth {
                        return Err(self.err(ErrorKind::TooDeep));
                    }
                    self.pos += 1;
                    let close = match b {
                        b'{' => b'}',
                        b'[' => b']',
                        _ => b')',
                    };
                    if self.peek_token()? == close {
                        self.pos += 1;
                        match b {
                            b'{' => Value::Dict(Vec::new()),
                            _ => Value::List(Vec::new()),
                        }
                    } else {
                        let frame = match b {
                            b'{' => Frame::Dict(Vec::with_capacity(8), None, self.parse_key()?),
                            _ => Frame::List(Vec::new(), close),
                        };
                        stack.extend(top.replace(frame));
                        continue;
                    }
                }
                _ => self.parse_scalar(b)?,
            };
            // A value is complete: hand it to its container, closing containers as we go.
            loop {
                let Some(frame) = top.as_mut() else {
                    return Ok(value);
                };
                let close = match frame {
                    Frame::List(items, close) => {
                        items.push(value);
                        *close
                    }
                    Frame::Dict(entries, index, key) => {
                        dict_insert(entries, index, std::mem::take(key), value);
                        b'}'
                    }
                };
                let mut c = self.peek_token()?;
                if c == b',' {
                    self.pos += 1;
                    c = self.peek_token()?;
                    if c != close {
                        if let Frame::Dict(_, _, key) = frame {
                            *key = self.parse_key()?;
                        }
                        break;
                    }
                } else if c != close {
                    return Err(self.err(ErrorKind::UnexpectedChar));
                }
                self.pos += 1;
                value = match top.take() {
                    Some(Frame::Dict(entries, ..)) => Value::Dict(entries),
                    Some(Frame::List(items, _)) => Value::List(items),
                    None => Value::Null, // unreachable: `top` was `Some` above
                };
                top = stack.pop();
            }
        }
    }

    /// Parses a dict key and the `:` after it.
    fn parse_key(&mut self) -> Result<String, Fail> {
        let b = self.peek_token()?;
        let Some(key) = self.try_string(b) else {
            use ErrorKind::{NonStringKey, UnexpectedChar};
            let value_start = is_ident_byte(b) || b"-+.[({".contains(&b);
            return Err(self.err(if value_start {
                NonStringKey
            } else {
                UnexpectedChar
            }));
        };
        let key = key?;
        if self.peek_token()? != b':' {
            return Err(self.err(ErrorKind::UnexpectedChar));
        }
        self.pos += 1;
        Ok(key)
    }

    fn parse_scalar(&mut self, b: u8) -> Result<Value, Fail> {
        if let Some(s) = self.try_string(b) {
            return s.map(Value::Str);
        }
        if b.is_ascii_digit() || b"-+.".contains(&b) {
            return self.parse_number();
        }
        let rest = self.input.get(self.pos..).unwrap_or_default();
        let value = match rest.get(..ident_len(rest)).unwrap_or_default() {
            b"True" | b"true" => Value::Bool(true),
            b"False" | b"false" => Value::Bool(false),
            b"None" | b"null" => Value::Null,
            b"NaN" => Value::Float(f64::NAN),
            b"Infinity" => Value::Float(f64::INFINITY),
            _ => return Err(self.err(ErrorKind::UnexpectedChar)),
        };
        self.pos += ident_len(rest);
        Ok(value)
    }

    /// Decodes a quoted string into `out`; `self.pos` is at the opening quote.
    fn scan_string<S: Sink>(&mut self, out: &mut S) -> Result<(), Fail> {
        let input = self.input;
        let quote = input.get(self.pos).copied().unwrap_or_default();
        let table = &STOP[usize::from(quote == b'"')];
        self.pos += 1;
        let mut run_start = self.pos;
        loop {
            let rest = input.get(self.pos..).unwrap_or_default();
            let run_len = find_stop(rest, table, quote);
            self.pos += run_len.unwrap_or(rest.len());
            let Some(&b) = input.get(self.pos) else {
                return Err(self.end_err(ErrorKind::UnterminatedString));
            };
            if b == 0xc2 && !matches!(input.get(self.pos + 1), Some(0x80..=0x9f)) {
                // An ordinary two-byte character (or invalid UTF-8): part of the run.
                self.pos += 1;
                continue;
            }
            if let Some(run) = input.get(run_start..self.pos).filter(|r| !r.is_empty()) {
                out.run(run, self.drops);
            }
            match b {
                b'\\' => self.escape(out)?,
                b'\n' => return Err(self.err(ErrorKind::UnterminatedString)),
                _ if b == quote => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => {
                    // A raw control character; a C1 one is two bytes long.
                    self.drops.control_chars += 1;
                    self.pos += if b == 0xc2 { 2 } else { 1 };
                }
            }
            run_start = self.pos;
        }
    }

    /// Decodes one escape; `self.pos` is at the backslash.
    fn escape<S: Sink>(&mut self, out: &mut S) -> Result<(), Fail> {
        let (input, bs) = (self.input, self.pos);
        let bad = || Fail::new(ErrorKind::BadEscape, bs);
        let Some(&c) = input.get(bs + 1) else {
            return Err(self.end_err(ErrorKind::UnterminatedString));
        };
        self.pos = bs + 2;
        let ch = match c {
            b'n' => '\n',
            b't' => '\t',
            b'r' => '\r',
            b'\\' | b'\'' | b'"' | b'/' => char::from(c),
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'a' => '\u{7}',
            b'v' => '\u{b}',
            b'\n' => return Ok(()), // line continuation
            b'0'..=b'7' => {
                let octal = |i: &usize| matches!(input.get(*i), Some(b'0'..=b'7'));
                self.pos = (bs + 2..bs + 4).find(|i| !octal(i)).unwrap_or(bs + 4);
                let digits = input[bs + 1..self.pos].iter();
                out.byte(
                    digits.fold(0, |v, d| v * 8 + u32::from(d - b'0')),
                    self.drops,
                );
                return Ok(());
            }
            b'x' => {
                out.byte(hex_at(input, bs + 2, 2).ok_or_else(bad)?, self.drops);
                self.pos = bs + 4;
                return Ok(());
            }
            b'u' | b'U' if !S::BYTES => {
                let n = if c == b'u' { 4 } else { 8 };
                let v = hex_at(input, bs + 2, n).ok_or_else(bad)?;
                self.pos = bs + 2 + n;
                // A high surrogate pairs with a directly following `\uDCxx`/`\U0000DCxx`.
                let n = match input.get(self.pos..self.pos + 2) {
                    Some(b"\\u") => 4,
                    Some(b"\\U") => 8,
                    _ => 0,
                };
                let low = hex_at(input, self.pos + 2, n).filter(|v| (0xdc00..=0xdfff).contains(v));
                match (v, low) {
                    (0xd800..=0xdbff, Some(low)) => {
                        self.pos += 2 + n;
                        out.byte(0x10000 + ((v - 0xd800) << 10) + (low - 0xdc00), self.drops);
                    }
                    (0xd800..=0xdfff, _) => self.drops.lone_surrogates += 1,
                    _ => out.ch(char::from_u32(v).ok_or_else(bad)?, self.drops),
                }
                return Ok(());
            }
            _ => {
                // Unknown escape: keep the backslash, and read what follows as usual.
                self.pos = bs + 1;
                '\\'
            }
        };
        out.ch(ch, self.drops);
        Ok(())
    }

    fn parse_number(&mut self) -> Result<Value, Fail> {
        match self.small_int() {
            Some(v) => Ok(v),
            None => self.parse_number_general(),
        }
    }

    /// The usual number, a Kafka offset or an epoch: an optional sign and 1 to 17 decimal
    /// digits without a leading zero, `_`, fraction or exponent. `None` (nothing consumed) for
    /// anything else, which [`Parser::parse_number_general`] reads.
    fn small_int(&mut self) -> Option<Value> {
        let (input, start) = (self.input, self.pos);
        let sign = input.get(start).copied();
        let digits_at = start + usize::from(matches!(sign, Some(b'-' | b'+')));
        let digits = input.get(digits_at..).unwrap_or_default();
        let n = digits
            .iter()
            .take(18)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if n == 0 || n > 17 || (n > 1 && digits[0] == b'0') {
            return None;
        }
        let next = digits.get(n).copied().unwrap_or(b' ');
        if is_ident_byte(next) || next == b'.' {
            return None;
        }
        let v = digits[..n]
            .iter()
            .fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
        self.pos = digits_at + n;
        Some(Value::Int(if sign == Some(b'-') { -v } else { v }))
    }

    fn parse_number_general(&mut self) -> Result<Value, Fail> {
        let (input, start) = (self.input, self.pos);
        let bad = || Fail::new(ErrorKind::BadNumber, start);
        let neg = input.get(start) == Some(&b'-');
        let unsigned = start + usize::from(matches!(input.get(start), Some(b'-' | b'+')));
        let body = input.get(unsigned..).unwrap_or_default();
        if body.first() == Some(&b'I') {
            if body.get(..ident_len(body)) != Some(b"Infinity") {
                return Err(bad());
            }
            self.pos = unsigned + 8;
            let inf = if neg { -f64::INFINITY } else { f64::INFINITY };
            return Ok(Value::Float(inf));
        }
        let radix = match body.get(..2) {
            Some([b'0', b'x' | b'X']) => 16,
            Some([b'0', b'o' | b'O']) => 8,
            Some([b'0', b'b' | b'B']) => 2,
            _ => 10,
        };
        let digits_at = if radix == 10 { unsigned } else { unsigned + 2 };
        let (mut end, int_digits) = digit_group(input, digits_at, radix).ok_or_else(bad)?;
        let mut is_float = false;
        if radix == 10 && input.get(end) == Some(&b'.') {
            let (after, frac_digits) = digit_group(input, end + 1, 10).ok_or_else(bad)?;
            (is_float, end) = (int_digits + frac_digits > 0, after);
        }
        if int_digits == 0 && !is_float {
            return Err(bad());
        }
        if radix == 10 && matches!(input.get(end), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(input.get(end + 1), Some(b'+' | b'-')));
            let (after, exp_digits) = digit_group(input, end + 1 + sign, 10).ok_or_else(bad)?;
            (is_float, end) = (exp_digits > 0, after);
            if !is_float {
                return Err(bad());
            }
        }
        let next = input.get(end).copied().unwrap_or(b' ');
        if is_ident_byte(next) || next == b'.' {
            return Err(bad());
        }
        self.pos = end;
        if is_float {
            let text: String = digit_chars(&input[start..end]).collect();
            return text.parse().map(Value::Float).map_err(|_| bad());
        }
        let digits = digit_chars(&input[digits_at..end]);
        let mut leading = digits.clone();
        if radix == 10 && leading.next() == Some('0') && leading.any(|c| c != '0') {
            return Err(bad()); // `012`: Python and JSON both reject leading zeros
        }
        let mut magnitude = Some(0u64);
        for d in digits.clone().filter_map(|c| c.to_digit(radix)) {
            magnitude = magnitude.and_then(|m| m.checked_mul(radix.into())?.checked_add(d.into()));
        }
        let small = magnitude.and_then(|m| match neg {
            true => 0i64.checked_sub_unsigned(m),
            false => i64::try_from(m).ok(),
        });
        match small {
            Some(v) => Ok(Value::Int(v)),
            None if radix != 10 => Err(bad()),
            None => {
                let sign = if neg { "-" } else { "" };
                Ok(Value::BigInt(sign.chars().chain(digits).collect()))
            }
        }
    }
}

/// A parsed value seen by reference: a string, or any other value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// A string (also the decoding of a bytes literal).
    Str(&'a str),
    /// Any value but a string.
    Other(&'a Value),
}

impl<'a> ValueRef<'a> {
    /// A view of `v`.
    pub fn of(v: &'a Value) -> ValueRef<'a> {
        match v {
            Value::Str(s) => ValueRef::Str(s),
            other => ValueRef::Other(other),
        }
    }

    /// An owned copy.
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Str(s) => Value::Str(s.to_string()),
            ValueRef::Other(v) => v.clone(),
        }
    }

    /// True for `None`/`null`.
    pub fn is_null(self) -> bool {
        matches!(self, ValueRef::Other(Value::Null))
    }
}

/// Where a decoded string of a flat parse lives: verbatim in the input (no escape, nothing
/// dropped) or in the scratch text. One word, so that it passes in registers: the top bit for
/// the text, 31 bits of start and 32 of end. (An enum of two `usize`s went through the stack,
/// and reading it back stalled on store forwarding, a third of the flat parse.) Inputs of
/// `FLAT_MAX_INPUT` bytes or more take the general parser.
#[derive(Debug, Clone, Copy)]
struct Piece(u64);

const PIECE_TEXT: u64 = 1 << 63;
/// The flat parse takes inputs shorter than this: every offset fits in 31 bits.
const FLAT_MAX_INPUT: usize = 1 << 31;

impl Piece {
    fn input(a: usize, b: usize) -> Piece {
        Piece(((a as u64) << 32) | b as u64)
    }
    fn text(a: usize, b: usize) -> Piece {
        Piece(PIECE_TEXT | ((a as u64) << 32) | b as u64)
    }
    fn in_text(self) -> bool {
        self.0 & PIECE_TEXT != 0
    }
    fn range(self) -> std::ops::Range<usize> {
        ((self.0 >> 32) as u32 & !(1 << 31)) as usize..self.0 as u32 as usize
    }
}

#[derive(Debug, Clone, Copy)]
enum FlatValue {
    Str(Piece),
    /// Never a string, a list or a dict: an index into the scratch values (small, so that an
    /// entry is built in registers).
    Other(u32),
}

/// Reusable buffers of [`parse_flat_dict`]: a dict of scalars parses without allocating.
#[derive(Debug, Default)]
pub struct FlatScratch {
    /// Strings that are not verbatim input (escapes, dropped characters).
    text: String,
    /// Values other than strings.
    values: Vec<Value>,
    entries: Vec<(Piece, FlatValue)>,
}

/// The entries of a dict parsed by [`parse_flat_dict`].
#[derive(Debug)]
pub struct FlatDict<'a> {
    /// The input, when it is all valid UTF-8 (strings may then borrow from it); else empty.
    input: &'a str,
    scratch: &'a FlatScratch,
}

/// A dict's entries as views, on the stack for the usual record (no allocation per record).
pub type Entries<'a> = smallvec::SmallVec<[(&'a str, ValueRef<'a>); 16]>;

impl<'a> FlatDict<'a> {
    /// Appends the entries, in dict order, to `out`. Filled in place: returned by value, the
    /// 650 bytes of inline entries were copied on every line (3% of extract).
    pub fn entries_into(&self, out: &mut Entries<'a>) {
        let scratch: &'a FlatScratch = self.scratch;
        let value = |v: FlatValue| match v {
            FlatValue::Str(p) => ValueRef::Str(self.piece(p)),
            FlatValue::Other(i) => ValueRef::Other(&scratch.values[i as usize]),
        };
        out.extend(
            scratch
                .entries
                .iter()
                .map(|&(k, v)| (self.piece(k), value(v))),
        );
    }

    fn piece(&self, p: Piece) -> &'a str {
        // Pieces end on character boundaries (quotes, backslashes and control characters are
        // ASCII), so these never fail; a failure would give an empty string, not a panic.
        match p.in_text() {
            false => self.input.get(p.range()),
            true => self.scratch.text.get(p.range()),
        }
        .unwrap_or_default()
    }
}

/// Dicts with more entries than this go to the general parser (its duplicate check is indexed).
const FLAT_MAX_ENTRIES: usize = 64;

/// A string sink that borrows the input when a string is one clean run, and decodes into the
/// scratch text otherwise.
struct PieceSink<'a, 's> {
    /// The input as text, when all of it is valid UTF-8; `None` makes every string a copy.
    valid: Option<&'a str>,
    input: &'a [u8],
    text: &'s mut String,
    state: PieceState,
}

#[derive(Clone, Copy)]
enum PieceState {
    Empty,
    Input(usize, usize),
    /// Decoded into the text from this offset on.
    Text(usize),
}

impl PieceSink<'_, '_> {
    fn offset(&self, run: &[u8]) -> usize {
        run.as_ptr() as usize - self.input.as_ptr() as usize
    }

    /// Moves what was borrowed so far into the text, so that more can be appended.
    fn make_text(&mut self) {
        match self.state {
            PieceState::Text(_) => {}
            PieceState::Empty => self.state = PieceState::Text(self.text.len()),
            PieceState::Input(a, b) => {
                let start = self.text.len();
                let run = self.valid.and_then(|v| v.get(a..b)).unwrap_or_default();
                self.text.push_str(run);
                self.state = PieceState::Text(start);
            }
        }
    }

    fn finish(self) -> Piece {
        match self.state {
            PieceState::Empty => Piece::text(0, 0),
            PieceState::Input(a, b) => Piece::input(a, b),
            PieceState::Text(a) => Piece::text(a, self.text.len()),
        }
    }
}

impl Sink for PieceSink<'_, '_> {
    const BYTES: bool = false;
    fn run(&mut self, run: &[u8], drops: &mut Drops) {
        if let Some(valid) = self.valid {
            // A run ends on a character boundary, and the whole input is valid.
            let (a, b) = (self.offset(run), self.offset(run) + run.len());
            if let PieceState::Empty = self.state {
                self.state = PieceState::Input(a, b);
                return;
            }
            self.make_text();
            self.text.push_str(valid.get(a..b).unwrap_or_default());
            return;
        }
        self.make_text();
        match simdutf8::basic::from_utf8(run) {
            Ok(s) => self.text.push_str(s),
            Err(_) => push_clean(self.text, run, drops),
        }
    }
    fn ch(&mut self, c: char, drops: &mut Drops) {
        self.make_text();
        match is_dropped_control(c) {
            true => drops.control_chars += 1,
            false => self.text.push(c),
        }
    }
    fn byte(&mut self, v: u32, drops: &mut Drops) {
        self.ch(char::from_u32(v).unwrap_or_default(), drops);
    }
}

/// The fast path of [`parse_dict`] for the usual record: a dict whose values are all strings,
/// numbers, booleans or null. Returns the offset after the dict, exactly as `parse_dict`
/// would, and its entries, which borrow from the input and from `scratch`: no allocation, and
/// one UTF-8 validation of the whole input instead of one per string.
///
/// `None` when the input is anything else (a nested value, a bytes literal, very many entries,
/// or an error): `parse_dict` then gives the answer, so the two never disagree. `drops` is only
/// added to on success.
pub fn parse_flat_dict<'a>(
    input: &'a [u8],
    start: usize,
    limits: &Limits,
    drops: &mut Drops,
    scratch: &'a mut FlatScratch,
) -> Option<(usize, FlatDict<'a>)> {
    let valid = simdutf8::basic::from_utf8(input).ok();
    flat_dict(input, valid, start, limits, drops, scratch)
}

/// [`parse_flat_dict`] of text already known to be UTF-8 (a line of a chunk that was checked
/// whole: one check of a few MiB costs a fraction of one per line).
pub fn parse_flat_dict_str<'a>(
    input: &'a str,
    start: usize,
    limits: &Limits,
    drops: &mut Drops,
    scratch: &'a mut FlatScratch,
) -> Option<(usize, FlatDict<'a>)> {
    flat_dict(input.as_bytes(), Some(input), start, limits, drops, scratch)
}

/// `valid` is `input` as text when it is UTF-8, else `None`.
fn flat_dict<'a>(
    input: &'a [u8],
    valid: Option<&'a str>,
    start: usize,
    limits: &Limits,
    drops: &mut Drops,
    scratch: &'a mut FlatScratch,
) -> Option<(usize, FlatDict<'a>)> {
    scratch.text.clear();
    scratch.values.clear();
    scratch.entries.clear();
    if limits.max_depth == 0 || input.len() >= FLAT_MAX_INPUT {
        return None;
    }
    let mut local = Drops::default();
    let mut p = Parser::new(input, start, &mut local);
    if p.peek_token().ok()? != b'{' {
        return None;
    }
    p.pos += 1;
    let mut closed = p.peek_token().ok()? == b'}';
    while !closed {
        let b = p.peek_token().ok()?;
        if p.string_at(b) != Some(false) {
            return None;
        }
        let key = p.flat_string(b, valid, &mut scratch.text)?;
        if p.peek_token().ok()? != b':' {
            return None;
        }
        p.pos += 1;
        let b = p.peek_token().ok()?;
        let value = match p.string_at(b) {
            // A string that fails: `parse_dict` reports the error.
            Some(false) => FlatValue::Str(p.flat_string(b, valid, &mut scratch.text)?),
            // Bytes literals and containers: the general parser.
            Some(true) => return None,
            None if matches!(b, b'{' | b'[' | b'(') => return None,
            // (Bounded: a line of one key repeated would otherwise pile up replaced values.)
            None if scratch.values.len() >= FLAT_MAX_ENTRIES => return None,
            None => {
                scratch.values.push(p.parse_scalar(b).ok()?);
                FlatValue::Other(scratch.values.len() as u32 - 1)
            }
        };
        // Python's rule for a repeated key: the last value, at the first key's place.
        let text = scratch.text.as_str();
        let same_key = |k: &Piece| piece_bytes(input, text, *k) == piece_bytes(input, text, key);
        let n = scratch.entries.len();
        match scratch.entries.iter_mut().find(|(k, _)| same_key(k)) {
            Some(slot) => slot.1 = value,
            None if n >= FLAT_MAX_ENTRIES => return None,
            None => scratch.entries.push((key, value)),
        }
        let mut c = p.peek_token().ok()?;
        if c == b',' {
            p.pos += 1;
            c = p.peek_token().ok()?;
        } else if c != b'}' {
            return None;
        }
        closed = c == b'}';
    }
    // At the closing brace.
    let end = p.pos + 1;
    if scratch.text.len() >= FLAT_MAX_INPUT {
        return None;
    }
    drops.add(&local);
    let input = valid.unwrap_or_default();
    Some((end, FlatDict { input, scratch }))
}

fn piece_bytes<'a>(input: &'a [u8], text: &'a str, p: Piece) -> &'a [u8] {
    match p.in_text() {
        false => input.get(p.range()),
        true => text.as_bytes().get(p.range()),
    }
    .unwrap_or_default()
}

impl Parser<'_, '_> {
    /// The `'...'`/`"..."`/`u'...'` string starting here (`string_at(b) == Some(false)`) into a
    /// piece; `None` when it fails.
    fn flat_string(&mut self, b: u8, valid: Option<&str>, text: &mut String) -> Option<Piece> {
        if b != b'\'' && b != b'"' {
            self.pos += 1; // the prefix
        }
        // The usual string, one clean run up to its closing quote, is borrowed whole: what
        // `scan_string` and the sink below do for it, without their per-run steps (29% fewer
        // instructions in this function, 8.6% fewer in a parser thread on JSON lines).
        if valid.is_some()
            && let Some(&quote) = self.input.get(self.pos)
        {
            let start = self.pos + 1;
            let rest = self.input.get(start..).unwrap_or_default();
            let table = &STOP[usize::from(quote == b'"')];
            if let Some(len) = find_stop(rest, table, quote)
                && rest[len] == quote
            {
                self.pos = start + len + 1;
                return Some(match len {
                    0 => Piece::text(0, 0),
                    _ => Piece::input(start, start + len),
                });
            }
        }
        let mut sink = PieceSink {
            valid,
            input: self.input,
            text,
            state: PieceState::Empty,
        };
        self.scan_string(&mut sink).ok()?;
        Some(sink.finish())
    }
}

/// Renders a value as Python repr (single quotes unless the string holds ' and no ", like Python) – used by property tests and by the project's test fixtures.
///
/// Non-finite floats render as Python does (`nan`, `inf`, `-inf`), which this parser
/// rejects. Python's `str.isprintable` is approximated: C0/C1 controls, DEL and a
/// short list of invisible characters are escaped, everything else is written raw.
pub fn to_python(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v, None);
    out
}

/// Renders as JSON; `ascii` = true escapes all non-ASCII as \uXXXX (surrogate pairs for astral chars), like json.dumps(ensure_ascii=True).
///
/// Uses `json.dumps`'s default separators (`", "` and `": "`) and float repr;
/// non-finite floats render as `NaN`, `Infinity` and `-Infinity`, as Python does.
pub fn to_json(v: &Value, ascii: bool) -> String {
    let mut out = String::new();
    write_value(&mut out, v, Some(ascii));
    out
}

/// `json` is `None` for Python repr, `Some(ensure_ascii)` for JSON.
fn write_value(out: &mut String, v: &Value, json: Option<bool>) {
    let words = match json {
        Some(_) => ["null", "true", "false"],
        None => ["None", "True", "False"],
    };
    match v {
        Value::Null => out.push_str(words[0]),
        Value::Bool(b) => out.push_str(words[if *b { 1 } else { 2 }]),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::BigInt(digits) => out.push_str(digits),
        Value::Float(f) => write_float(out, *f, json.is_some()),
        Value::Str(s) => write_str(out, s, json),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { "" });
                write_value(out, item, json);
            }
            out.push(']');
        }
        Value::Dict(entries) => {
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { "" });
                write_str(out, key, json);
                out.push_str(": ");
                write_value(out, item, json);
            }
            out.push('}');
        }
    }
}

/// Python's `float.__repr__`: shortest round-trip digits, scientific notation outside
/// 1e-4 <= |f| < 1e16, always a `.0` or an exponent so that it reads back as a float.
fn write_float(out: &mut String, f: f64, json: bool) {
    const NAMES: [[&str; 3]; 2] = [["nan", "inf", "-inf"], ["NaN", "Infinity", "-Infinity"]];
    if !f.is_finite() {
        let which = usize::from(!f.is_nan()) + usize::from(f < 0.0);
        return out.push_str(NAMES[usize::from(json)][which]);
    }
    let sci = format!("{f:e}"); // shortest round-trip digits, e.g. "-1.5e-7"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    out.push_str(if f.is_sign_negative() { "-" } else { "" });
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let dot = if rest.is_empty() { "" } else { "." };
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "{first}{dot}{rest}e{sign}{:02}", exp.unsigned_abs());
    } else if exp < 0 {
        let zeros = "0".repeat(exp.unsigned_abs() as usize - 1);
        let _ = write!(out, "0.{zeros}{digits}");
    } else {
        let int_len = exp as usize + 1;
        let (int_part, frac) = digits.split_at(int_len.min(digits.len()));
        let zeros = "0".repeat(int_len - int_part.len());
        let frac = if frac.is_empty() { "0" } else { frac };
        let _ = write!(out, "{int_part}{zeros}.{frac}");
    }
}

/// Characters Python's `repr` escapes beyond the controls (an approximation of
/// `not str.isprintable()`: separators, format characters, private use, noncharacters).
fn python_escapes(c: char) -> bool {
    matches!(c,
        '\0'..='\u{1f}' | '\u{7f}'..='\u{a0}' | '\u{ad}' | '\u{1680}' | '\u{180e}'
        | '\u{2000}'..='\u{200f}' | '\u{2028}'..='\u{202f}' | '\u{205f}'..='\u{206f}'
        | '\u{3000}' | '\u{e000}'..='\u{f8ff}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}'
        | '\u{fffe}' | '\u{ffff}' | '\u{f0000}'..='\u{10ffff}')
}

fn write_str(out: &mut String, s: &str, json: Option<bool>) {
    let quote = match json {
        None if s.contains('\'') && !s.contains('"') => '"',
        None => '\'',
        Some(_) => '"',
    };
    out.push(quote);
    for c in s.chars() {
        let _ = match (c, json) {
            ('\\', _) => write!(out, "\\\\"),
            ('\n', _) => write!(out, "\\n"),
            ('\r', _) => write!(out, "\\r"),
            ('\t', _) => write!(out, "\\t"),
            _ if c == quote => write!(out, "\\{c}"),
            (_, None) if python_escapes(c) => match u32::from(c) {
                v @ 0..=0xff => write!(out, "\\x{v:02x}"),
                v @ 0x100..=0xffff => write!(out, "\\u{v:04x}"),
                v => write!(out, "\\U{v:08x}"),
            },
            ('\u{8}', Some(_)) => write!(out, "\\b"),
            ('\u{c}', Some(_)) => write!(out, "\\f"),
            (_, Some(ascii)) if c < ' ' || (ascii && c > '~') => c
                .encode_utf16(&mut [0; 2])
                .iter()
                .try_for_each(|u| write!(out, "\\u{u:04x}")),
            _ => write!(out, "{c}"),
        };
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorKind::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn parse(src: &[u8]) -> Result<(Value, usize, Drops), ParseError> {
        let mut drops = Drops::default();
        let parsed = parse_value(src, 0, &Limits::default(), &mut drops);
        parsed.map(|(v, end)| (v, end, drops))
    }

    /// Parses a whole input that must succeed.
    fn ok(src: &str) -> Value {
        match parse(src.as_bytes()) {
            Ok((v, end, _)) if end == src.len() => v,
            other => panic!("{src:?} -> {other:?}"),
        }
    }

    /// Parses a whole string literal; returns it and its drops (lone, invalid, control).
    fn string(src: &[u8]) -> (String, [u64; 3]) {
        match parse(src) {
            Ok((Value::Str(s), end, d)) if end == src.len() => {
                (s, [d.lone_surrogates, d.invalid_bytes, d.control_chars])
            }
            other => panic!("{:?} -> {other:?}", String::from_utf8_lossy(src)),
        }
    }

    fn fail(src: &[u8]) -> (ErrorKind, usize) {
        match parse(src) {
            Err(e) => (e.kind, e.offset),
            Ok(v) => panic!("{:?} parsed as {v:?}", String::from_utf8_lossy(src)),
        }
    }

    fn s(x: &str) -> Value {
        Value::Str(x.to_string())
    }

    fn dict(entries: &[(&str, Value)]) -> Value {
        let entries = entries.iter().map(|(k, v)| (k.to_string(), v.clone()));
        Value::Dict(entries.collect())
    }

    fn list(items: &[Value]) -> Value {
        Value::List(items.to_vec())
    }

    #[test]
    fn escapes_in_both_quote_styles() {
        let cases = [
            (r#"\n\t\\\'\"\/"#, "\n\t\\'\"/", [0, 0, 0]),
            (r"\r", "", [0, 0, 1]),
            (r"a\bb\f\a\v\0", "ab", [0, 0, 5]),
            (r"\x41\xe9\xa0", "Aé\u{a0}", [0, 0, 0]),
            (r"\x85", "", [0, 0, 1]),
            (r"\u00e9\uAC00\U0001F600", "é가😀", [0, 0, 0]),
            ("a\\\nb", "ab", [0, 0, 0]),
            (r"\101\12\1011\7", "A\nA1", [0, 0, 1]),
            (r"\q\N{x}\ ", r"\q\N{x}\ ", [0, 0, 0]),
            (r"\ud83d\ude00|\U0000d83d\U0000de00", "😀|😀", [0, 0, 0]),
            (r"\ud83d\U0000DE00", "😀", [0, 0, 0]),
            (r"\ud83d|\ude00x|\ud83d\u0041", "|x|A", [3, 0, 0]),
            (r"\ud83d\ud83d\ude00", "😀", [1, 0, 0]),
            (r"a\u0003b", "ab", [0, 0, 1]),
            (r"\x1b[3~", "[3~", [0, 0, 1]),
            (r"{not} [a] (dict):,", "{not} [a] (dict):,", [0, 0, 0]),
        ];
        for (inner, want, drops) in cases {
            for q in ['\'', '"'] {
                for prefix in ["", "u", "U"] {
                    let src = format!("{prefix}{q}{inner}{q}");
                    let want = (want.to_string(), drops);
                    assert_eq!(string(src.as_bytes()), want, "{src}");
                }
            }
        }
        for inner in r"\x4zz \xzz \u12 \u12g4 \U00110000 \U1234 \u".split(' ') {
            for q in ['\'', '"'] {
                let src = format!("{{'k': {q}ab{inner}{q}}}");
                assert_eq!(fail(src.as_bytes()), (BadEscape, 9), "{src}");
            }
        }
    }

    #[test]
    fn bytes_literals_and_raw_bytes() {
        let cases: [(&[u8], &str, [u64; 3]); 19] = [
            (br"b'\xed\x95\x9c'", "한", [0, 0, 0]),
            (br"B'\xff'", "", [0, 1, 0]),
            (br#"b"a\x00b\r""#, "ab", [0, 0, 2]),
            (br"b'\u0041\101\n\t'", "\\u0041A\n\t", [0, 0, 0]),
            (br"b'\xc2\x85\xc2\xa9'", "©", [0, 0, 1]),
            (br"b'\xe2\x82'", "", [0, 2, 0]),
            (br"b'it\'s'", "it's", [0, 0, 0]),
            (b"'a\xffb'", "ab", [0, 1, 0]),
            (b"'\xe2\x82x\xc2'", "x", [0, 3, 0]),
            // Surrogates in UTF-8 form (Python's `surrogatepass`): lone, or a pair's character.
            (b"'\xed\xa0\xbd'", "", [1, 0, 0]),
            (b"'A\xed\xb3\xabB'", "AB", [1, 0, 0]),
            (b"'\xed\xa0\xbd\xed\xb8\x80'", "😀", [0, 0, 0]),
            (br"b'\xed\xa0\xbd\xed\xb8\x80\xed'", "😀", [0, 1, 0]),
            ("'회의 시작할까요'".as_bytes(), "회의 시작할까요", [0, 0, 0]),
            ("\"© ° ÿ\"".as_bytes(), "© ° ÿ", [0, 0, 0]),
            (b"'a\x01b\x7fc\rd'", "abcd", [0, 0, 3]),
            (b"'a\xc2\x85b\xc2\x9f'", "ab", [0, 0, 2]),
            (b"'a\tb'", "a\tb", [0, 0, 0]),
            (b"\"it's\"", "it's", [0, 0, 0]),
        ];
        for (src, want, drops) in cases {
            let text = String::from_utf8_lossy(src);
            assert_eq!(string(src), (want.to_string(), drops), "{text}");
        }
    }

    #[test]
    fn corpus_examples() {
        let src = br#"{"message": "\uc548\udce3\udc84\ub155 \ub098\ub294 4\udcec\uc57c"}"#;
        let (v, _, d) = parse(src).unwrap();
        assert_eq!(v, dict(&[("message", s("안녕 나는 4야"))]));
        assert_eq!((d.lone_surrogates, d.total()), (3, 3));

        let src = "{'message': '회의 시작할까요', 'time': '2024-08-28 12:19:05', \
                   'user': 'TL', 'offset': 5}";
        let want = dict(&[
            ("message", s("회의 시작할까요")),
            ("time", s("2024-08-28 12:19:05")),
            ("user", s("TL")),
            ("offset", Value::Int(5)),
        ]);
        assert_eq!(ok(src), want);

        let src = r#"{"sender": "[INFO]", "message": "User [user1] has entered\n", "end": false, "timestamp": "2024-08-26T11:25:59.859694"}"#;
        let want = dict(&[
            ("sender", s("[INFO]")),
            ("message", s("User [user1] has entered\n")),
            ("end", Value::Bool(false)),
            ("timestamp", s("2024-08-26T11:25:59.859694")),
        ]);
        assert_eq!(ok(src), want);

        // Braces and quotes inside strings never end the record.
        let src = r#"{'m': "it's {not} a 'dict'", 'n': 1}"#;
        let want = dict(&[("m", s("it's {not} a 'dict'")), ("n", Value::Int(1))]);
        assert_eq!(ok(src), want);
        let want = list(&[s("}"), s("]"), s("'"), s(")")]);
        assert_eq!(ok(r#"['}', "]", '\'', ")"]"#), want);
    }

    #[test]
    fn keywords_and_numbers() {
        let (t, f) = (Value::Bool(true), Value::Bool(false));
        let want = [t.clone(), t, f.clone(), f, Value::Null, Value::Null];
        assert_eq!(ok("[True, true, False, false, None, null]"), list(&want));
        let ints = ok("[0, -0, 000, +5, 1_000, 0x_fF, 0o17, 0B101, -0x10]");
        let want = [0, 0, 0, 5, 1000, 255, 15, 5, -16].map(Value::Int);
        assert_eq!(ints, list(&want));
        let ints = ok("(-0x8000000000000000, 9223372036854775807, -9223372036854775808)");
        assert_eq!(ints, list(&[i64::MIN, i64::MAX, i64::MIN].map(Value::Int)));
        let bigs = ok("(9223372036854775808, -9223372036854775809, +1_0000000000_0000000000)");
        let want = "9223372036854775808 -9223372036854775809 100000000000000000000".split(' ');
        assert_eq!(
            bigs,
            Value::List(want.map(|d| Value::BigInt(d.into())).collect())
        );
        let floats = "[1.5, 1e9, -2.5E-3, 1E+2, .5, -.5, 5., 5.e1, 012.5, 0e5, 1_0.2_5e1_0, \
                      1e999, Infinity, -Infinity, +Infinity]";
        let inf = f64::INFINITY;
        let want = [
            1.5, 1e9, -2.5e-3, 1e2, 0.5, -0.5, 5.0, 50.0, 12.5, 0.0, 10.25e10, inf,
        ];
        let want = want.into_iter().chain([inf, -inf, inf]).map(Value::Float);
        assert_eq!(ok(floats), Value::List(want.collect()));
        assert!(matches!(ok("-0.0"), Value::Float(z) if z == 0.0 && z.is_sign_negative()));
        assert!(matches!(ok("NaN"), Value::Float(f) if f.is_nan()));
        for src in "nan inf Truex NONE _ x __import__ r'x'".split(' ') {
            assert_eq!(fail(src.as_bytes()), (UnexpectedChar, 0), "{src}");
        }
        let bad = "1__0 1_ 012 00_7 1e 1e+ 1.2.3 0x 0xg 0b2 0x_ - + . 1x 1e5x ._5 1._5 1_.5 \
                   0x8000000000000000 -0x8000000000000001 0o8 0x1.5 1.e_1 -. -x -inf -NaN -Infinityx";
        for src in bad.split_whitespace() {
            assert_eq!(fail(src.as_bytes()), (BadNumber, 0), "{src}");
        }
    }

    #[test]
    fn huge_integers_are_linear() {
        let started = std::time::Instant::now();
        let digits = format!("-1{}", "0".repeat(9_999));
        assert_eq!(ok(&digits), Value::BigInt(digits.clone()));
        let million = format!("9{}", "8_7".repeat(333_333));
        let Value::BigInt(big) = ok(&million) else {
            panic!()
        };
        assert_eq!(big, million.replace('_', ""));
        assert!(started.elapsed().as_secs() < 5);
    }

    #[test]
    fn containers() {
        let (one, two) = (Value::Int(1), Value::Int(2));
        let empty = [ok("[]"), ok("()"), ok("{}")];
        assert_eq!(empty, [list(&[]), list(&[]), dict(&[])]);
        assert_eq!(ok("(1,)"), list(std::slice::from_ref(&one)));
        assert_eq!(ok("( 1 , 2 , )"), list(&[one.clone(), two.clone()]));
        assert_eq!(ok("[1,2,]"), list(&[one.clone(), two.clone()]));
        assert_eq!(ok("{'a':1,}"), dict(&[("a", one.clone())]));
        let nested = list(&[one.clone(), list(&[two.clone(), dict(&[("b", list(&[]))])])]);
        let src = "{'a': [1, (2, {'b': ()})], \"c\": {}}";
        assert_eq!(ok(src), dict(&[("a", nested), ("c", dict(&[]))]));
        let pretty = "[\n  {\"a\": 1},\r\n\t{\"a\": 2}\n]";
        let want = list(&[dict(&[("a", one.clone())]), dict(&[("a", two)])]);
        assert_eq!(ok(pretty), want);
        let want = dict(&[("k", s("v")), ("w", one)]);
        assert_eq!(ok("{b'k': u'v', U\"w\": 1}"), want);
        let bad = "[,] [1,,2] [1_2] {'a'_1} [1} {'a':_1_'b':_2} {,} (1]";
        for (src, offset) in bad.split(' ').zip([1, 3, 3, 5, 2, 8, 1, 2]) {
            let src = src.replace('_', " ");
            assert_eq!(fail(src.as_bytes()), (UnexpectedChar, offset), "{src}");
        }
    }

    #[test]
    fn duplicate_keys_last_wins_at_first_position() {
        let want = dict(&[("a", Value::Int(3)), ("b", Value::Int(2))]);
        assert_eq!(ok("{'a': 1, 'b': 2, 'a': 3}"), want);
        // Past DICT_SCAN_MAX a hash index takes over, with the same semantics.
        let body: Vec<String> = (0..100).map(|i| format!("'k{}': {i}", i % 40)).collect();
        let entries = ok(&format!("{{{}}}", body.join(", ")));
        let last = |i: i64| Value::Int(if i < 20 { i + 80 } else { i + 40 });
        let want = (0..40).map(|i| (format!("k{i}"), last(i)));
        assert_eq!(entries, Value::Dict(want.collect()));
    }

    #[test]
    fn errors_have_codes_and_offsets() {
        let cases: [(&[u8], ErrorKind, usize); 17] = [
            (b"{'message': 'hel", UnterminatedString, 16),
            (b"{'message': 'hel\\", UnterminatedString, 17),
            (b"{'a': 1", UnexpectedEof, 7),
            (b"{'a': 1,", UnexpectedEof, 8),
            (b"{'a':", UnexpectedEof, 5),
            (b"", UnexpectedEof, 0),
            (b"  \n ", UnexpectedEof, 4),
            (b"{1: 2}", NonStringKey, 1),
            (b"{'a': 1, (1,): 2}", NonStringKey, 9),
            (b"{None: 2}", NonStringKey, 1),
            (b"{@: 2}", UnexpectedChar, 1),
            (b"{'a': __import__('os')}", UnexpectedChar, 6),
            (b"{'a': \xff}", UnexpectedChar, 6),
            (b"{'a': r'x'}", UnexpectedChar, 6),
            (b"{'a': 'x', 'b': 1e}", BadNumber, 16),
            // A truncated line must not swallow the next one.
            (b"{'a': 'hel\n{'b': 2}\n", UnterminatedString, 10),
            (b"{'a': \"hel\n\"}", UnterminatedString, 10),
        ];
        for (src, kind, offset) in cases {
            let text = String::from_utf8_lossy(src);
            assert_eq!(fail(src), (kind, offset), "{text}");
        }
        let (v, end, _) = parse(b"{'a': 1} trailing").unwrap();
        assert_eq!((v, end), (dict(&[("a", Value::Int(1))]), 8));

        let e = ParseError {
            kind: UnterminatedString,
            offset: 17,
        };
        assert_eq!(e.to_string(), "unterminated string at byte 17");
        assert_eq!(e.kind.code(), "unterminated_string");
        let kinds = [
            UnexpectedEof,
            UnexpectedChar,
            BadEscape,
            BadNumber,
            NonStringKey,
        ];
        let codes = kinds.map(|k| k.code()).join(" ");
        assert_eq!(
            codes,
            "unexpected_eof unexpected_char bad_escape bad_number non_string_key"
        );
        assert_eq!(
            [TooDeep.code(), ExpectedDict.code()],
            ["too_deep", "expected_dict"]
        );
        assert_eq!(size_of::<Result<Value, Fail>>(), size_of::<Value>()); // see `Fail`
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.to_string().ends_with("byte 17"));
    }

    #[test]
    fn parse_dict_and_start_offsets() {
        let (limits, mut d) = (Limits::default(), Drops::default());
        let input = b"{'a': 1}\n  {\"b\": [2]} tail";
        let (entries, end) = parse_dict(input, 0, &limits, &mut d).unwrap();
        assert_eq!((entries, end), (vec![("a".to_string(), Value::Int(1))], 8));
        let (entries, end) = parse_dict(input, end, &limits, &mut d).unwrap();
        let want = vec![("b".to_string(), list(&[Value::Int(2)]))];
        assert_eq!((entries, end), (want, 21));
        let cases: [(&[u8], usize, ErrorKind, usize); 6] = [
            (input, 21, ExpectedDict, 22),
            (b"[1]", 0, ExpectedDict, 0),
            (b"  'x'", 0, ExpectedDict, 2),
            (b"None", 0, ExpectedDict, 0),
            (b"  ", 0, UnexpectedEof, 2),
            (b"{'a'}", 99, UnexpectedEof, 5),
        ];
        for (src, start, kind, offset) in cases {
            let e = parse_dict(src, start, &limits, &mut d).unwrap_err();
            assert_eq!((e.kind, e.offset), (kind, offset));
        }
        assert_eq!(d, Drops::default());
        let mut total = Drops::default();
        (
            total.lone_surrogates,
            total.invalid_bytes,
            total.control_chars,
        ) = (1, 2, 3);
        total.add(&total.clone());
        let got = [total.lone_surrogates, total.invalid_bytes, total.total()];
        assert_eq!(got, [2, 4, 12]);
    }

    #[test]
    fn depth_limit() {
        let depth = |max_depth, src: &[u8]| {
            let parsed = parse_value(src, 0, &Limits { max_depth }, &mut Drops::default());
            parsed.map(|_| ()).map_err(|e| (e.kind, e.offset))
        };
        assert_eq!(depth(3, b"[[{'a': 1}]]"), Ok(()));
        assert_eq!(depth(3, b"[[{'a': []}]]"), Err((TooDeep, 8)));
        assert_eq!(depth(0, b"[]"), Err((TooDeep, 0)));
        assert_eq!(Limits::default().max_depth, 64);
        // 100,000 levels on a thread with the default 2 MiB test stack.
        let builder = std::thread::Builder::new().stack_size(2 << 20);
        let worker = builder.spawn(move || {
            let n = 100_000;
            let lists = format!("{}{}", "[".repeat(n), "]".repeat(n));
            let dicts = format!("{}1{}", "{'a': ".repeat(n), "}".repeat(n));
            for (input, offset) in [(lists, 64), (dicts, 64 * 6), ("(".repeat(n), 64)] {
                assert_eq!(depth(64, input.as_bytes()), Err((TooDeep, offset)));
            }
        });
        worker.unwrap().join().unwrap();
    }

    #[test]
    fn renders_like_python() {
        let b = list(&[Value::Float(1.0), Value::Null, Value::Bool(true)]);
        let v = dict(&[
            ("a", Value::Int(-1)),
            ("b", b),
            ("c", s("it's")),
            ("d", s("it's \"x\"\\")),
            ("e", s("\u{1b}\u{85}\u{a0}\u{2028}\u{feff}\u{f0000}한\n")),
            ("f", Value::BigInt("-123456789012345678901".into())),
        ]);
        let py = r#"{'a': -1, 'b': [1.0, None, True], 'c': "it's", 'd': 'it\'s "x"\\', 'e': '\x1b\x85\xa0\u2028\ufeff\U000f0000한\n', 'f': -123456789012345678901}"#;
        assert_eq!(to_python(&v), py);
        let json = "{\"a\": -1, \"b\": [1.0, null, true], \"c\": \"it's\", \"d\": \"it's \\\"x\\\"\\\\\", \"e\": \"\\u001b\u{85}\u{a0}\u{2028}\u{feff}\u{f0000}한\\n\", \"f\": -123456789012345678901}";
        assert_eq!(to_json(&v, false), json);
        let ascii = to_json(&s("한😀\u{7f}\u{8}\u{c}\r\t/"), true);
        assert_eq!(ascii, r#""\ud55c\ud83d\ude00\u007f\b\f\r\t/""#);
        let floats = [0.0, -0.0, 123.0, 0.1, 1e-4, 1e-5, -1.5e-7, 1e16, 5e-324];
        let want = "[0.0, -0.0, 123.0, 0.1, 0.0001, 1e-05, -1.5e-07, 1e+16, 5e-324]";
        assert_eq!(to_python(&list(&floats.map(Value::Float))), want);
        let floats = [9999999999999998.0, 12345678901234567.0];
        let want = "[9999999999999998.0, 1.2345678901234568e+16]";
        assert_eq!(to_python(&list(&floats.map(Value::Float))), want);
        let special = list(&[f64::NAN, f64::INFINITY, -f64::INFINITY].map(Value::Float));
        assert_eq!(to_python(&special), "[nan, inf, -inf]");
        assert_eq!(to_json(&special, true), "[NaN, Infinity, -Infinity]");
    }

    fn text() -> impl Strategy<Value = String> {
        let special = "'\"{}[]():,\\\n\t ubx0한글😀©\u{a0}\u{ad}\u{2028}\u{feff}\u{ffff}";
        let special = prop::sample::select(special.chars().collect::<Vec<_>>());
        let any_char = any::<char>().prop_filter("dropped by design", |c| !is_dropped_control(*c));
        let chars = prop::collection::vec(prop_oneof![3 => any_char, 2 => special], 0..12);
        chars.prop_map(|chars| chars.into_iter().collect())
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            "-?[1-9][0-9]{19,40}".prop_map(Value::BigInt),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::Float),
            text().prop_map(Value::Str),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let entries = prop::collection::vec((text(), inner.clone()), 0..6);
            let unique = |entries: Vec<(String, Value)>| {
                let mut seen = HashSet::new();
                let entries = entries.into_iter().filter(|(k, _)| seen.insert(k.clone()));
                Value::Dict(entries.collect())
            };
            let items = prop::collection::vec(inner, 0..6);
            prop_oneof![items.prop_map(Value::List), entries.prop_map(unique)]
        })
    }

    fn never_panics(bytes: &[u8]) {
        let limits = Limits { max_depth: 8 };
        for start in [0, 1, bytes.len() / 2] {
            let mut d = Drops::default();
            if let Ok((_, end)) = parse_value(bytes, start, &limits, &mut d) {
                assert!(end > start && end <= bytes.len());
            }
            if let Ok((_, end)) = parse_dict(bytes, start, &limits, &mut d) {
                assert!(end > start && end <= bytes.len());
            }
        }
    }

    fn soup() -> impl Strategy<Value = Vec<u8>> {
        let alphabet = b"{}[](),:'\"\\ \n\r\tuUbBxX0179aefEe.-+_TrueNn\xc2\x85\xed\xa0\xff";
        prop::collection::vec(prop::sample::select(alphabet.to_vec()), 0..256)
    }

    #[test]
    fn a_key_repeated_without_end_leaves_the_flat_path_with_bounded_scratch() {
        let line = format!("{{{}'a': 1}}", "'a': 0, ".repeat(1000));
        let (limits, mut scratch) = (Limits::default(), FlatScratch::default());
        let flat = parse_flat_dict(
            line.as_bytes(),
            0,
            &limits,
            &mut Drops::default(),
            &mut scratch,
        );
        assert!(flat.is_none());
        assert!(scratch.values.len() <= FLAT_MAX_ENTRIES);
        // The general parser gives the answer: the last value.
        let (entries, _) = parse_dict(line.as_bytes(), 0, &limits, &mut Drops::default()).unwrap();
        assert_eq!(entries, vec![("a".to_string(), Value::Int(1))]);
    }

    #[test]
    fn pieces_keep_their_place_and_side() {
        let top = FLAT_MAX_INPUT - 1;
        for (a, b) in [(0, 0), (3, 17), (top, top), (0, top)] {
            assert_eq!(
                (Piece::input(a, b).in_text(), Piece::input(a, b).range()),
                (false, a..b)
            );
            assert_eq!(
                (Piece::text(a, b).in_text(), Piece::text(a, b).range()),
                (true, a..b)
            );
        }
    }

    /// A flat dict's entries as owned values.
    fn owned(dict: &FlatDict<'_>) -> Vec<(String, Value)> {
        let mut entries = Entries::new();
        dict.entries_into(&mut entries);
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_value()))
            .collect()
    }

    /// The flat path either declines or gives exactly what the general parser gives.
    fn flat_agrees(bytes: &[u8]) -> Result<bool, TestCaseError> {
        let limits = Limits::default();
        let mut scratch = FlatScratch::default();
        let mut taken = false;
        for start in [0, 1] {
            let (mut general_drops, mut flat_drops) = (Drops::default(), Drops::default());
            let general = parse_dict(bytes, start, &limits, &mut general_drops);
            let flat = parse_flat_dict(bytes, start, &limits, &mut flat_drops, &mut scratch);
            let Some((end, dict)) = flat else {
                prop_assert_eq!(flat_drops, Drops::default());
                continue;
            };
            taken |= start == 0;
            let text = String::from_utf8_lossy(bytes);
            let Ok((entries, general_end)) = general else {
                return Err(TestCaseError::fail(format!("flat accepted {text}")));
            };
            let flat = owned(&dict);
            // Debug, so that NaN equals NaN.
            prop_assert_eq!(format!("{flat:?}"), format!("{entries:?}"), "{}", text);
            prop_assert_eq!((end, flat_drops), (general_end, general_drops), "{}", text);
            // Text already known to be UTF-8 takes the same path to the same answer.
            if let Ok(s) = std::str::from_utf8(bytes) {
                let (mut str_drops, mut str_scratch) = (Drops::default(), FlatScratch::default());
                let r = parse_flat_dict_str(s, start, &limits, &mut str_drops, &mut str_scratch);
                let Some((str_end, dict)) = r else {
                    return Err(TestCaseError::fail(format!("str path declined {text}")));
                };
                let via_str = owned(&dict);
                prop_assert_eq!(format!("{via_str:?}"), format!("{flat:?}"), "{}", text);
                prop_assert_eq!((str_end, str_drops), (end, flat_drops), "{}", text);
            }
        }
        Ok(taken)
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            "-?[1-9][0-9]{19,22}".prop_map(Value::BigInt),
            any::<f64>().prop_map(Value::Float),
            text().prop_map(Value::Str),
        ]
    }

    /// Dicts of scalars, keys repeating now and then.
    fn flat_dict() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            3 => prop::sample::select(vec!["message", "user", "time", "", "é"]).prop_map(String::from),
            1 => text(),
        ];
        prop::collection::vec((key, scalar()), 0..8).prop_map(Value::Dict)
    }

    #[test]
    fn flat_path_takes_typical_records() {
        let lines: [&[u8]; 7] = [
            "{'message': '회의 시작할까요', 'time': '2024-08-28 12:19:05', 'user': 'TL', 'offset': 5}".as_bytes(),
            // Keys that share their first bytes, or differ only in length, and a key
            // repeated once escaped: told apart, or found equal, as the general parser does.
            b"{'message_a': 1, 'message_b': 2, 'message_a': 3, 'message': 4, 'messages': 5, 'message_b': 6}",
            b"{'m\\x65ssage': 'x', 'message': 'y', '': 1, '\\x00': 2, '': 3}",
            br#"{"sender": "[INFO]", "message": "User [user1] has entered\n", "end": false, "timestamp": "2024-08-26T11:25:59.859694"}"#,
            br#"{"message": "\uc548\udce3\udc84\ub155", "offset": 12345, "x": null, "y": 1.5}"#,
            b"{'message': 'a\x01b\xff', u'user': \"it's\", 'message': 'again'}",
            b"{ }",
        ];
        for line in lines {
            let text = String::from_utf8_lossy(line);
            assert!(flat_agrees(line).unwrap(), "flat path not taken: {text}");
        }
        // Nested values, bytes literals and errors go to the general parser.
        for line in [
            &b"{'a': [1]}"[..],
            b"{'a': {}}",
            b"{b'a': 1}",
            b"{'a': b'x'}",
            b"{'a' 1}",
            // A failed prefixed string is not read again from where it failed.
            b"{'message': 'hi', 'x': u'\\xTrue}",
            b"{'x': u'\\uNone, 'message': 'hi'}",
            b"{'x': U'\\U00110000null}",
            b"{'x': 'a\\x1Infinity}",
        ] {
            assert!(
                !flat_agrees(line).unwrap(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn small_ints_take_the_short_path_and_the_rest_do_not() {
        let short = |t: &str| {
            let mut drops = Drops::default();
            let mut p = Parser::new(t.as_bytes(), 0, &mut drops);
            p.small_int().map(|v| (v, p.pos))
        };
        assert_eq!(short("0,"), Some((Value::Int(0), 1)));
        assert_eq!(short("-0}"), Some((Value::Int(0), 2)));
        assert_eq!(short("+5"), Some((Value::Int(5), 2)));
        assert_eq!(
            short("-12345678901234567 "),
            Some((Value::Int(-12345678901234567), 18))
        );
        for t in [
            "007",
            "1_000",
            "1.5",
            "1e5",
            "0x1f",
            "123456789012345678",
            "12a",
            "-",
            "",
        ] {
            assert_eq!(short(t), None, "{t}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn flat_path_agrees_with_the_general_parser(v in flat_dict(), cut: prop::sample::Index, byte: u8) {
            for text in [to_python(&v), to_json(&v, false), to_json(&v, true)] {
                let taken = flat_agrees(text.as_bytes())?;
                let finite = !format!("{v:?}").contains("inf") && !format!("{v:?}").contains("NaN");
                prop_assert!(taken || !finite, "flat path not taken: {}", text);
                let mut bytes = text.into_bytes();
                let at = cut.index(bytes.len() + 1);
                flat_agrees(&bytes[..at])?;
                if let Some(b) = bytes.get_mut(at) {
                    *b = byte;
                    flat_agrees(&bytes)?;
                }
            }
        }

        #[test]
        fn small_int_agrees_with_the_general_number_parser(
            text in prop_oneof![
                "[-+]?[0-9]{1,19}[ ,}a-z._]?",
                "[-+]?[0-9_]{0,20}(\\.[0-9]*)?([eE][-+]?[0-9]{0,3})?[a-z ,}.]?",
            ],
        ) {
            // `parse_number` (short path first) answers as the general parser alone, and the
            // short path consumes nothing when it declines.
            let input = text.as_bytes();
            let mut drops = Drops::default();
            let mut fast = Parser::new(input, 0, &mut drops);
            let short = fast.small_int();
            if short.is_none() {
                prop_assert_eq!(fast.pos, 0);
            }
            let mut drops = Drops::default();
            let mut both = Parser::new(input, 0, &mut drops);
            let got = both.parse_number().map_err(|e| e.0.kind);
            let mut drops = Drops::default();
            let mut general = Parser::new(input, 0, &mut drops);
            let want = general.parse_number_general().map_err(|e| e.0.kind);
            prop_assert_eq!(&got, &want, "{}", &text);
            prop_assert_eq!(both.pos, general.pos);
            if let Some(v) = short {
                prop_assert_eq!(Ok(v), want);
                prop_assert_eq!(fast.pos, general.pos);
            }
        }

        #[test]
        fn find_stop_in_long_plain_runs(
            plain in prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..100),
            stop in prop::sample::select(b"'\"\\\n\x00\x1f\x7f\xc2".to_vec()),
            at in any::<prop::sample::Index>(),
            double in any::<bool>(),
        ) {
            // A stop byte after up to 99 others: most fall beyond the first 16-byte block.
            let quote = if double { b'"' } else { b'\'' };
            let table = &STOP[usize::from(double)];
            let mut bytes = plain;
            bytes.insert(at.index(bytes.len() + 1), stop);
            let want = bytes.iter().position(|&b| table[usize::from(b)]);
            prop_assert_eq!(find_stop(&bytes, table, quote), want);
            prop_assert_eq!(find_stop_words(&bytes, table, quote), want);
        }

        #[test]
        fn find_stop_is_the_first_stop_byte(
            bytes in prop::collection::vec(prop_oneof![
                4 => 0x20u8..0x7f,
                2 => 0x80u8..=0xff,
                1 => prop::sample::select(b"'\"\\\t\n\r\x00\x1f\x7f\xc2".to_vec()),
            ], 0..80),
            double in any::<bool>(),
        ) {
            let quote = if double { b'"' } else { b'\'' };
            let table = &STOP[usize::from(double)];
            let want = bytes.iter().position(|&b| table[usize::from(b)]);
            prop_assert_eq!(find_stop(&bytes, table, quote), want);
            prop_assert_eq!(find_stop_words(&bytes, table, quote), want);
        }

        #[test]
        fn flat_path_agrees_on_grammar_soup(bytes in soup()) {
            flat_agrees(&bytes)?;
            for prefix in [&b"{'k': "[..], b"{'k': u'\\", b"{'k': U\"\\", b"{'k': '\\"] {
                let mut dict = prefix.to_vec();
                dict.extend_from_slice(&bytes);
                flat_agrees(&dict)?;
            }
        }

        #[test]
        fn roundtrips_through_python_and_json(v in value()) {
            for text in [to_python(&v), to_json(&v, false), to_json(&v, true)] {
                let parsed = parse(text.as_bytes()).map_err(|e| format!("{text}: {e}"));
                let (back, end, drops) = parsed.map_err(TestCaseError::fail)?;
                prop_assert_eq!(&back, &v, "{}", text);
                prop_assert_eq!((end, drops), (text.len(), Drops::default()));
            }
            prop_assert!(to_json(&v, true).is_ascii());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            never_panics(&bytes);
        }

        #[test]
        fn grammar_soup_never_panics(bytes in soup()) {
            never_panics(&bytes);
        }

        #[test]
        fn damaged_records_never_panic(v in value(), cut: prop::sample::Index, byte: u8) {
            let mut bytes = to_python(&v).into_bytes();
            let at = cut.index(bytes.len() + 1);
            never_panics(&bytes[..at]);
            if let Some(b) = bytes.get_mut(at) {
                *b = byte;
                never_panics(&bytes);
            }
        }
    }

    #[test]
    #[ignore = "micro-benchmark: cargo test --release -- --ignored --nocapture"]
    fn bench_typical_lines() {
        let lines: [&[u8]; 3] = [
            "{'message': '회의 시작할까요', 'time': '2024-08-28 12:19:05', 'user': 'TL', 'offset': 5}".as_bytes(),
            br#"{"sender": "[INFO]", "message": "User [user1] has entered\n", "end": false, "timestamp": "2024-08-26T11:25:59.859694"}"#,
            br#"{"message": "\uc548\udce3\udc84\ub155 \ub098\ub294 4\udcec\uc57c", "offset": 12345}"#,
        ];
        // On-CPU time of this thread, so that other load on a shared machine distorts less;
        // wall-clock time where /proc is missing.
        let cpu_ns = || -> Option<f64> {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
            stat.split_whitespace().next()?.parse().ok()
        };
        let iterations = std::env::var("LITERAL_BENCH_ITERS").ok();
        let iterations: usize = iterations.and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
        for line in lines {
            let (wall, cpu) = (std::time::Instant::now(), cpu_ns());
            for _ in 0..iterations {
                let mut drops = Drops::default();
                let line = std::hint::black_box(line);
                let parsed = parse_dict(line, 0, &Limits::default(), &mut drops);
                std::hint::black_box((parsed.is_ok(), drops));
            }
            let wall = wall.elapsed().as_secs_f64();
            let secs = cpu.zip(cpu_ns()).map_or(wall, |(a, b)| (b - a) / 1e9);
            let mb_s = (line.len() * iterations) as f64 / secs / 1e6;
            let ns = secs * 1e9 / iterations as f64;
            let text = String::from_utf8_lossy(line);
            println!("{mb_s:5.0} MB/s {ns:4.0} ns/line (wall {wall:.2} s) {text}");
        }
    }
}
