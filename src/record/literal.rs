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
    /// An integer that fits in `i64`.
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
    /// `\uXXXX`/`\UXXXXXXXX` surrogate escapes that were not a high+low pair.
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
    /// Byte offset into the whole input slice (not relative to `start`); for
    /// [`ErrorKind::UnexpectedEof`] and a string cut off by the end of input, the input's length.
    pub offset: usize,
}

/// The kinds of parse failure; [`ErrorKind::code`] gives each a stable short code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input ended before the value did.
    UnexpectedEof,
    /// A byte that cannot appear here (also names like `nan` or `__import__`).
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

    fn describe(self) -> &'static str {
        match self {
            ErrorKind::UnexpectedEof => "unexpected end of input",
            ErrorKind::UnexpectedChar => "unexpected character",
            ErrorKind::UnterminatedString => "unterminated string",
            ErrorKind::BadEscape => "bad escape sequence",
            ErrorKind::BadNumber => "bad number",
            ErrorKind::NonStringKey => "non-string dict key",
            ErrorKind::TooDeep => "nesting too deep",
            ErrorKind::ExpectedDict => "expected a dict",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.kind.describe(), self.offset)
    }
}

impl std::error::Error for ParseError {}

/// Parses one value starting at `input[start]` (leading whitespace skipped). Returns the value and the byte offset just after it. Never panics, never recurses deeper than limits.max_depth (return TooDeep), runs in linear time.
///
/// Whatever follows the value is left alone: it is the caller's business.
pub fn parse_value(
    input: &[u8],
    start: usize,
    limits: &Limits,
    drops: &mut Drops,
) -> Result<(Value, usize), ParseError> {
    let mut p = Parser {
        input,
        pos: start.min(input.len()),
        drops,
    };
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
    let mut p = Parser {
        input,
        pos: start.min(input.len()),
        drops,
    };
    if p.peek_token()? != b'{' {
        return Err(p.err(ErrorKind::ExpectedDict));
    }
    let open = p.err(ErrorKind::ExpectedDict);
    match p.parse(limits.max_depth)? {
        Value::Dict(entries) => Ok((entries, p.pos)),
        _ => Err(open),
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

static STOP_SINGLE: [bool; 256] = stop_table(b'\'');
static STOP_DOUBLE: [bool; 256] = stop_table(b'"');

/// True for the characters every decoded string loses.
fn is_dropped_control(c: char) -> bool {
    matches!(c, '\0'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// Appends `bytes` to `out`, dropping invalid UTF-8 and control characters.
fn push_clean(out: &mut String, mut bytes: &[u8], drops: &mut Drops) {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => return push_filtered(out, s, drops),
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                push_filtered(out, std::str::from_utf8(valid).unwrap_or_default(), drops);
                let bad = e.error_len().unwrap_or(rest.len());
                drops.invalid_bytes += bad as u64;
                bytes = rest.get(bad..).unwrap_or_default();
            }
        }
    }
}

/// Appends `s` to `out` without its control characters.
fn push_filtered(out: &mut String, s: &str, drops: &mut Drops) {
    if !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        if is_dropped_control(c) {
            drops.control_chars += 1;
        } else {
            out.push(c);
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
        match std::str::from_utf8(run) {
            Ok(s) => self.0.push_str(s),
            Err(_) => push_clean(&mut self.0, run, drops),
        }
    }
    fn ch(&mut self, c: char, drops: &mut Drops) {
        if is_dropped_control(c) {
            drops.control_chars += 1;
        } else {
            self.0.push(c);
        }
    }
    fn byte(&mut self, v: u32, drops: &mut Drops) {
        if let Some(c) = char::from_u32(v) {
            self.ch(c, drops);
        }
    }
}

struct ByteSink(Vec<u8>);

impl Sink for ByteSink {
    const BYTES: bool = true;
    fn run(&mut self, run: &[u8], _: &mut Drops) {
        self.0.extend_from_slice(run);
    }
    fn ch(&mut self, c: char, _: &mut Drops) {
        let mut buf = [0; 4];
        self.0.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    fn byte(&mut self, v: u32, _: &mut Drops) {
        self.0.push((v & 0xff) as u8);
    }
}

/// Reads exactly `n` hex digits at `input[at..]`.
fn hex_at(input: &[u8], at: usize, n: usize) -> Option<u32> {
    input
        .get(at..at.checked_add(n)?)?
        .iter()
        .try_fold(0u32, |acc, &b| Some(acc * 16 + char::from(b).to_digit(16)?))
}

/// Reads a run of decimal digits with Python's underscore rule (an underscore only
/// between two digits). Returns the end offset and the digit count; `None` for a
/// misplaced underscore.
fn digit_group(input: &[u8], mut i: usize) -> Option<(usize, usize)> {
    let (mut digits, mut after_underscore) = (0, false);
    while let Some(&b) = input.get(i) {
        if b.is_ascii_digit() {
            digits += 1;
            after_underscore = false;
        } else if b == b'_' {
            if digits == 0 || after_underscore {
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

/// An open container on the parser's explicit stack.
enum Frame {
    List {
        items: Vec<Value>,
        close: u8,
    },
    Dict {
        entries: Vec<(String, Value)>,
        index: Option<HashMap<String, usize>>,
        key: String,
    },
}

impl Frame {
    fn into_value(self) -> Value {
        match self {
            Frame::List { items, .. } => Value::List(items),
            Frame::Dict { entries, .. } => Value::Dict(entries),
        }
    }
}

/// Inserts with Python's duplicate-key semantics, in linear time overall.
fn dict_insert(
    entries: &mut Vec<(String, Value)>,
    index: &mut Option<HashMap<String, usize>>,
    key: String,
    value: Value,
) {
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
        let map = entries.iter().enumerate();
        *index = Some(map.map(|(i, (k, _))| (k.clone(), i)).collect());
    }
}

struct Parser<'a, 'd> {
    input: &'a [u8],
    pos: usize,
    drops: &'d mut Drops,
}

impl Parser<'_, '_> {
    fn err(&self, kind: ErrorKind) -> ParseError {
        ParseError {
            kind,
            offset: self.pos,
        }
    }

    fn end_err(&self, kind: ErrorKind) -> ParseError {
        ParseError {
            kind,
            offset: self.input.len(),
        }
    }

    /// Skips whitespace and returns the next byte without consuming it.
    fn peek_token(&mut self) -> Result<u8, ParseError> {
        while let Some(&b) = self.input.get(self.pos) {
            if !matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                return Ok(b);
            }
            self.pos += 1;
        }
        Err(self.end_err(ErrorKind::UnexpectedEof))
    }

    /// If a string literal starts here (first byte `b`): whether it is a bytes literal,
    /// and the length of its prefix.
    fn string_start(&self, b: u8) -> Option<(bool, usize)> {
        match b {
            b'\'' | b'"' => Some((false, 0)),
            b'u' | b'U' | b'b' | b'B'
                if matches!(self.input.get(self.pos + 1), Some(b'\'' | b'"')) =>
            {
                Some((matches!(b, b'b' | b'B'), 1))
            }
            _ => None,
        }
    }

    /// The whole grammar, iteratively: containers live on `stack`, never on the call stack.
    fn parse(&mut self, max_depth: usize) -> Result<Value, ParseError> {
        let mut stack: Vec<Frame> = Vec::new();
        loop {
            // At a value position.
            let b = self.peek_token()?;
            let mut value = match b {
                b'{' | b'[' | b'(' => {
                    if stack.len() >= max_depth {
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
                        if b == b'{' {
                            Value::Dict(Vec::new())
                        } else {
                            Value::List(Vec::new())
                        }
                    } else if b == b'{' {
                        let key = self.parse_key()?;
                        let (entries, index) = (Vec::new(), None);
                        stack.push(Frame::Dict {
                            entries,
                            index,
                            key,
                        });
                        continue;
                    } else {
                        let items = Vec::new();
                        stack.push(Frame::List { items, close });
                        continue;
                    }
                }
                _ => self.parse_scalar(b)?,
            };
            // A value is complete: hand it to its container, closing containers as we go.
            loop {
                let Some(top) = stack.last_mut() else {
                    return Ok(value);
                };
                let close = match top {
                    Frame::List { items, close } => {
                        items.push(value);
                        *close
                    }
                    Frame::Dict {
                        entries,
                        index,
                        key,
                    } => {
                        dict_insert(entries, index, std::mem::take(key), value);
                        b'}'
                    }
                };
                let mut c = self.peek_token()?;
                if c == b',' {
                    self.pos += 1;
                    c = self.peek_token()?;
                    if c != close {
                        if let Frame::Dict { key, .. } = top {
                            *key = self.parse_key()?;
                        }
                        break;
                    }
                } else if c != close {
                    return Err(self.err(ErrorKind::UnexpectedChar));
                }
                self.pos += 1;
                // `top` exists, so `pop` cannot return `None`.
                value = stack.pop().map_or(Value::Null, Frame::into_value);
            }
        }
    }

    /// Parses a dict key and the `:` after it.
    fn parse_key(&mut self) -> Result<String, ParseError> {
        let b = self.peek_token()?;
        let Some((bytes, prefix)) = self.string_start(b) else {
            let value_start = matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'[' | b'(' | b'{');
            return Err(self.err(if value_start || is_ident_byte(b) {
                ErrorKind::NonStringKey
            } else {
                ErrorKind::UnexpectedChar
            }));
        };
        self.pos += prefix;
        let key = self.parse_string(bytes)?;
        if self.peek_token()? != b':' {
            return Err(self.err(ErrorKind::UnexpectedChar));
        }
        self.pos += 1;
        Ok(key)
    }

    fn parse_scalar(&mut self, b: u8) -> Result<Value, ParseError> {
        if let Some((bytes, prefix)) = self.string_start(b) {
            self.pos += prefix;
            return self.parse_string(bytes).map(Value::Str);
        }
        match b {
            b'0'..=b'9' | b'-' | b'+' | b'.' => self.parse_number(),
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                let start = self.pos;
                let rest = self.input.get(start..).unwrap_or_default();
                let len = rest.iter().position(|&b| !is_ident_byte(b));
                let word = rest.get(..len.unwrap_or(rest.len())).unwrap_or_default();
                let value = match word {
                    b"True" | b"true" => Value::Bool(true),
                    b"False" | b"false" => Value::Bool(false),
                    b"None" | b"null" => Value::Null,
                    b"NaN" => Value::Float(f64::NAN),
                    b"Infinity" => Value::Float(f64::INFINITY),
                    _ => return Err(self.err(ErrorKind::UnexpectedChar)),
                };
                self.pos += word.len();
                Ok(value)
            }
            _ => Err(self.err(ErrorKind::UnexpectedChar)),
        }
    }

    /// Parses a string literal; `self.pos` is at its opening quote.
    fn parse_string(&mut self, bytes: bool) -> Result<String, ParseError> {
        if bytes {
            let mut sink = ByteSink(Vec::new());
            self.scan_string(&mut sink)?;
            let mut s = String::with_capacity(sink.0.len());
            push_clean(&mut s, &sink.0, self.drops);
            Ok(s)
        } else {
            let mut sink = StrSink(String::new());
            self.scan_string(&mut sink)?;
            Ok(sink.0)
        }
    }

    fn scan_string<S: Sink>(&mut self, out: &mut S) -> Result<(), ParseError> {
        let input = self.input;
        let quote = input.get(self.pos).copied().unwrap_or(b'\'');
        let table = if quote == b'"' {
            &STOP_DOUBLE
        } else {
            &STOP_SINGLE
        };
        self.pos += 1;
        let mut run_start = self.pos;
        loop {
            let rest = input.get(self.pos..).unwrap_or_default();
            self.pos += rest
                .iter()
                .position(|&b| table[usize::from(b)])
                .unwrap_or(rest.len());
            let Some(&b) = input.get(self.pos) else {
                return Err(self.end_err(ErrorKind::UnterminatedString));
            };
            let c1 = matches!(input.get(self.pos + 1), Some(0x80..=0x9f));
            if b == 0xc2 && !c1 {
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
    fn escape<S: Sink>(&mut self, out: &mut S) -> Result<(), ParseError> {
        let input = self.input;
        let bs = self.pos;
        let bad = || ParseError {
            kind: ErrorKind::BadEscape,
            offset: bs,
        };
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
            b'\n' => return Ok(()),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                while self.pos < bs + 4 {
                    match input.get(self.pos) {
                        Some(&d @ b'0'..=b'7') => v = v * 8 + u32::from(d - b'0'),
                        _ => break,
                    }
                    self.pos += 1;
                }
                out.byte(v, self.drops);
                return Ok(());
            }
            b'x' => {
                let v = hex_at(input, bs + 2, 2).ok_or_else(bad)?;
                self.pos = bs + 4;
                out.byte(v, self.drops);
                return Ok(());
            }
            b'u' | b'U' if !S::BYTES => {
                let n = if c == b'u' { 4 } else { 8 };
                let v = hex_at(input, bs + 2, n).ok_or_else(bad)?;
                self.pos = bs + 2 + n;
                match v {
                    0xd800..=0xdbff => match self.low_surrogate_at(self.pos) {
                        Some((low, len)) => {
                            self.pos += len;
                            let joined = 0x10000 + ((v - 0xd800) << 10) + (low - 0xdc00);
                            if let Some(c) = char::from_u32(joined) {
                                out.ch(c, self.drops);
                            }
                        }
                        None => self.drops.lone_surrogates += 1,
                    },
                    0xdc00..=0xdfff => self.drops.lone_surrogates += 1,
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

    /// A `\uDCxx`-style low surrogate escape at `at`: its value and length.
    fn low_surrogate_at(&self, at: usize) -> Option<(u32, usize)> {
        if self.input.get(at) != Some(&b'\\') {
            return None;
        }
        let n = match self.input.get(at + 1)? {
            b'u' => 4,
            b'U' => 8,
            _ => return None,
        };
        let v = hex_at(self.input, at + 2, n)?;
        (0xdc00..=0xdfff).contains(&v).then_some((v, 2 + n))
    }

    fn parse_number(&mut self) -> Result<Value, ParseError> {
        let input = self.input;
        let start = self.pos;
        let bad = || ParseError {
            kind: ErrorKind::BadNumber,
            offset: start,
        };
        let mut i = start;
        let neg = input.get(i) == Some(&b'-');
        if matches!(input.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        if input.get(i) == Some(&b'I') {
            let rest = input.get(i..).unwrap_or_default();
            let len = rest
                .iter()
                .position(|&b| !is_ident_byte(b))
                .unwrap_or(rest.len());
            if rest.get(..len) != Some(b"Infinity") {
                return Err(bad());
            }
            self.pos = i + len;
            let inf = if neg {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            };
            return Ok(Value::Float(inf));
        }
        if input.get(i) == Some(&b'0') {
            let radix = match input.get(i + 1) {
                Some(b'x' | b'X') => 16,
                Some(b'o' | b'O') => 8,
                Some(b'b' | b'B') => 2,
                _ => 0,
            };
            if radix != 0 {
                let (end, v) = radix_int(input, i + 2, radix, neg).ok_or_else(bad)?;
                self.pos = end;
                return Ok(Value::Int(v));
            }
        }
        let digits_start = i;
        let (end, int_digits) = digit_group(input, i).ok_or_else(bad)?;
        i = end;
        let (mut is_float, mut frac_digits) = (false, 0);
        if input.get(i) == Some(&b'.') {
            is_float = true;
            (i, frac_digits) = digit_group(input, i + 1).ok_or_else(bad)?;
        }
        if int_digits == 0 && frac_digits == 0 {
            return Err(bad());
        }
        if matches!(input.get(i), Some(b'e' | b'E')) {
            is_float = true;
            i += 1;
            if matches!(input.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let (end, exp_digits) = digit_group(input, i).ok_or_else(bad)?;
            if exp_digits == 0 {
                return Err(bad());
            }
            i = end;
        }
        if input.get(i).is_some_and(|&b| is_ident_byte(b) || b == b'.') {
            return Err(bad());
        }
        let text = input.get(start..i).unwrap_or_default();
        self.pos = i;
        if is_float {
            let clean: String = text
                .iter()
                .filter(|&&b| b != b'_')
                .map(|&b| char::from(b))
                .collect();
            return clean.parse().map(Value::Float).map_err(|_| bad());
        }
        let digits = input.get(digits_start..i).unwrap_or_default();
        let mut digits = digits.iter().filter(|&&b| b != b'_');
        if digits.clone().next() == Some(&b'0') && digits.clone().any(|&b| b != b'0') {
            return Err(bad()); // Python rejects leading zeros (`012`), JSON too
        }
        let mut magnitude = Some(0u64);
        for &d in digits.clone() {
            magnitude = magnitude.and_then(|m| m.checked_mul(10)?.checked_add(u64::from(d - b'0')));
            if magnitude.is_none() {
                break;
            }
        }
        let small = magnitude.and_then(|m| {
            if neg {
                0i64.checked_sub_unsigned(m)
            } else {
                i64::try_from(m).ok()
            }
        });
        if let Some(v) = small {
            return Ok(Value::Int(v));
        }
        let mut big = String::with_capacity(text.len());
        if neg {
            big.push('-');
        }
        big.extend(digits.by_ref().map(|&b| char::from(b)));
        Ok(Value::BigInt(big))
    }
}

/// Reads the digits of a `0x`/`0o`/`0b` integer from `i` (just after the prefix).
/// `None` if malformed or outside `i64`.
fn radix_int(input: &[u8], mut i: usize, radix: u32, neg: bool) -> Option<(usize, i64)> {
    let (mut magnitude, mut digits, mut after_underscore) = (0u64, 0, false);
    while let Some(&b) = input.get(i) {
        if b == b'_' {
            if after_underscore {
                return None;
            }
            after_underscore = true; // Python allows `0x_ff`
        } else if let Some(d) = char::from(b).to_digit(radix) {
            magnitude = magnitude
                .checked_mul(u64::from(radix))?
                .checked_add(u64::from(d))?;
            digits += 1;
            after_underscore = false;
        } else {
            break;
        }
        i += 1;
    }
    if digits == 0
        || after_underscore
        || input.get(i).is_some_and(|&b| is_ident_byte(b) || b == b'.')
    {
        return None;
    }
    let v = if neg {
        0i64.checked_sub_unsigned(magnitude)?
    } else {
        i64::try_from(magnitude).ok()?
    };
    Some((i, v))
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
    match v {
        Value::Null => out.push_str(if json.is_some() { "null" } else { "None" }),
        Value::Bool(b) => out.push_str(match (b, json.is_some()) {
            (true, true) => "true",
            (false, true) => "false",
            (true, false) => "True",
            (false, false) => "False",
        }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::BigInt(digits) => out.push_str(digits),
        Value::Float(f) => write_float(out, *f, json.is_some()),
        Value::Str(s) => write_str(out, s, json),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item, json);
            }
            out.push(']');
        }
        Value::Dict(entries) => {
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, key, json);
                out.push_str(": ");
                write_value(out, item, json);
            }
            out.push('}');
        }
    }
}

/// Python's `float.__repr__`: shortest round-trip digits, scientific notation outside
/// 1e-4 <= |f| < 1e16, always a `.0` or an exponent so it reads back as a float.
fn write_float(out: &mut String, f: f64, json: bool) {
    if !f.is_finite() {
        out.push_str(match (f.is_nan(), f > 0.0, json) {
            (true, _, false) => "nan",
            (true, _, true) => "NaN",
            (false, true, false) => "inf",
            (false, true, true) => "Infinity",
            (false, false, false) => "-inf",
            (false, false, true) => "-Infinity",
        });
        return;
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if mantissa.starts_with('-') {
        out.push('-');
    }
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                let (int_part, frac) = digits.split_at(int_len);
                let _ = write!(out, "{int_part}.{frac}");
            }
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        out.push_str(first);
        if !rest.is_empty() {
            let _ = write!(out, ".{rest}");
        }
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exp.unsigned_abs());
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
        Some(_) => '"',
        None if s.contains('\'') && !s.contains('"') => '"',
        None => '\'',
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ if c == quote => {
                out.push('\\');
                out.push(c);
            }
            _ => match json {
                None if python_escapes(c) => {
                    let _ = match u32::from(c) {
                        v @ 0..=0xff => write!(out, "\\x{v:02x}"),
                        v @ 0x100..=0xffff => write!(out, "\\u{v:04x}"),
                        v => write!(out, "\\U{v:08x}"),
                    };
                }
                Some(_) if c == '\u{8}' => out.push_str("\\b"),
                Some(_) if c == '\u{c}' => out.push_str("\\f"),
                Some(ascii) if c < ' ' || (ascii && c > '~') => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                _ => out.push(c),
            },
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    type Parsed = Result<(Value, usize, Drops), ParseError>;

    fn parse(src: &[u8]) -> Parsed {
        let mut drops = Drops::default();
        parse_value(src, 0, &Limits::default(), &mut drops).map(|(v, end)| (v, end, drops))
    }

    fn ok(src: &str) -> Value {
        match parse(src.as_bytes()) {
            Ok((v, end, _)) if end == src.len() => v,
            other => panic!("{src:?} -> {other:?}"),
        }
    }

    fn string(src: &[u8]) -> (String, Drops) {
        match parse(src) {
            Ok((Value::Str(s), end, d)) if end == src.len() => (s, d),
            other => panic!("{:?} -> {other:?}", String::from_utf8_lossy(src)),
        }
    }

    fn fail(src: &[u8]) -> (ErrorKind, usize) {
        match parse(src) {
            Err(e) => (e.kind, e.offset),
            Ok(v) => panic!("{:?} parsed as {v:?}", String::from_utf8_lossy(src)),
        }
    }

    fn dr(lone_surrogates: u64, invalid_bytes: u64, control_chars: u64) -> Drops {
        Drops {
            lone_surrogates,
            invalid_bytes,
            control_chars,
        }
    }

    fn s(x: &str) -> Value {
        Value::Str(x.to_string())
    }

    fn dict(entries: &[(&str, Value)]) -> Value {
        Value::Dict(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn escapes_in_both_quote_styles() {
        let none = dr(0, 0, 0);
        let cases = [
            (r"\n", "\n", none),
            (r"\t", "\t", none),
            (r"\r", "", dr(0, 0, 1)),
            (r"\\", "\\", none),
            (r"\'", "'", none),
            (r#"\""#, "\"", none),
            (r"\/", "/", none),
            (r"a\bb", "ab", dr(0, 0, 1)),
            (r"\f\a\v\0", "", dr(0, 0, 4)),
            (r"\x41\xe9", "Aé", none),
            (r"\x85", "", dr(0, 0, 1)),
            (r"\xa0", "\u{a0}", none),
            (r"\u00e9\uAC00", "é가", none),
            (r"\U0001F600", "😀", none),
            ("a\\\nb", "ab", none),
            (r"\101\12\1011", "A\nA1", none),
            (r"\7", "", dr(0, 0, 1)),
            (r"\q\N{x}", r"\q\N{x}", none),
            (r"\ud83d\ude00", "😀", none),
            (r"\U0000d83d\U0000de00", "😀", none),
            (r"\ud83d\U0000DE00", "😀", none),
            (r"\ud83d", "", dr(1, 0, 0)),
            (r"\ude00x", "x", dr(1, 0, 0)),
            (r"\ud83d\ud83d\ude00", "😀", dr(1, 0, 0)),
            (r"\ud83d\u0041", "A", dr(1, 0, 0)),
            (r"\u0003", "", dr(0, 0, 1)),
            (r"\x1b[3~", "[3~", dr(0, 0, 1)),
            (r"{not} [a] (dict)", "{not} [a] (dict)", none),
        ];
        for (inner, want, want_drops) in cases {
            for q in ['\'', '"'] {
                for prefix in ["", "u", "U"] {
                    let src = format!("{prefix}{q}{inner}{q}");
                    assert_eq!(
                        string(src.as_bytes()),
                        (want.to_string(), want_drops),
                        "{src}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_escapes() {
        for inner in [
            r"\x4",
            r"\xzz",
            r"\u12",
            r"\u12g4",
            r"\U00110000",
            r"\U1234",
            r"\u",
        ] {
            for q in ['\'', '"'] {
                let src = format!("{{'k': {q}ab{inner}zz{q}}}");
                assert_eq!(fail(src.as_bytes()), (ErrorKind::BadEscape, 9), "{src}");
            }
        }
    }

    #[test]
    fn bytes_literals() {
        let none = dr(0, 0, 0);
        let cases: [(&[u8], &str, Drops); 8] = [
            (br"b'\xed\x95\x9c'", "한", none),
            (br"B'\xff'", "", dr(0, 1, 0)),
            (br#"b"a\x00b\r""#, "ab", dr(0, 0, 2)),
            (br"b'\u0041'", r"\u0041", none),
            (br"b'\101\n\t'", "A\n\t", none),
            (br"b'\xc2\x85\xc2\xa9'", "©", dr(0, 0, 1)),
            (br"b'\xe2\x82'", "", dr(0, 2, 0)),
            (br"b'it\'s'", "it's", none),
        ];
        for (src, want, want_drops) in cases {
            assert_eq!(string(src), (want.to_string(), want_drops));
        }
    }

    #[test]
    fn raw_bytes_in_strings() {
        let none = dr(0, 0, 0);
        let cases: [(&[u8], &str, Drops); 10] = [
            (b"'a\xffb'", "ab", dr(0, 1, 0)),
            (b"'\xe2\x82'", "", dr(0, 2, 0)),
            (b"'\xe2\x82x\xc2'", "x", dr(0, 3, 0)),
            ("'회의 시작할까요'".as_bytes(), "회의 시작할까요", none),
            ("\"© ° ÿ\"".as_bytes(), "© ° ÿ", none),
            (b"'a\x01b\x7fc\rd'", "abcd", dr(0, 0, 3)),
            (b"'a\xc2\x85b\xc2\x9f'", "ab", dr(0, 0, 2)),
            (b"'a\tb'", "a\tb", none),
            (b"'\xed\xa0\xbd'", "", dr(0, 3, 0)),
            (b"\"it's\"", "it's", none),
        ];
        for (src, want, want_drops) in cases {
            assert_eq!(string(src), (want.to_string(), want_drops));
        }
    }

    #[test]
    fn corpus_examples() {
        let src = r#"{"message": "\uc548\udce3\udc84\ub155 \ub098\ub294 4\udcec\uc57c"}"#;
        let (v, _, d) = parse(src.as_bytes()).unwrap();
        assert_eq!(v, dict(&[("message", s("안녕 나는 4야"))]));
        assert_eq!(d, dr(3, 0, 0));
        assert_eq!(d.total(), 3);

        let src = "{'message': '회의 시작할까요', 'time': '2024-08-28 12:19:05', 'user': 'TL', 'offset': 5}";
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
        assert_eq!(string(br#""a\u0003b""#), ("ab".into(), dr(0, 0, 1)));
    }

    #[test]
    fn braces_and_quotes_inside_strings() {
        let src = r#"{'m': "it's {not} a 'dict'", 'n': 1}"#;
        let want = dict(&[("m", s("it's {not} a 'dict'")), ("n", Value::Int(1))]);
        assert_eq!(ok(src), want);
        assert_eq!(
            ok(r#"['}', "]", '\'', ")"]"#),
            Value::List(vec![s("}"), s("]"), s("'"), s(")")])
        );
    }

    #[test]
    fn keywords() {
        for (src, want) in [
            ("True", Value::Bool(true)),
            ("true", Value::Bool(true)),
            ("False", Value::Bool(false)),
            ("false", Value::Bool(false)),
            ("None", Value::Null),
            ("null", Value::Null),
            ("Infinity", Value::Float(f64::INFINITY)),
            ("-Infinity", Value::Float(f64::NEG_INFINITY)),
            ("+Infinity", Value::Float(f64::INFINITY)),
        ] {
            assert_eq!(ok(src), want, "{src}");
        }
        assert!(matches!(ok("NaN"), Value::Float(f) if f.is_nan()));
        for src in ["nan", "inf", "Truex", "NONE", "_", "x"] {
            assert_eq!(
                fail(src.as_bytes()),
                (ErrorKind::UnexpectedChar, 0),
                "{src}"
            );
        }
        for src in ["-inf", "-NaN", "-Infinityx"] {
            assert_eq!(fail(src.as_bytes()), (ErrorKind::BadNumber, 0), "{src}");
        }
    }

    #[test]
    fn numbers() {
        let big = |d: &str| Value::BigInt(d.to_string());
        for (src, want) in [
            ("0", Value::Int(0)),
            ("-0", Value::Int(0)),
            ("000", Value::Int(0)),
            ("-5", Value::Int(-5)),
            ("+5", Value::Int(5)),
            ("1_000", Value::Int(1000)),
            ("0x_fF", Value::Int(255)),
            ("0o17", Value::Int(15)),
            ("0B101", Value::Int(5)),
            ("-0x10", Value::Int(-16)),
            ("-0x8000000000000000", Value::Int(i64::MIN)),
            ("9223372036854775807", Value::Int(i64::MAX)),
            ("-9223372036854775808", Value::Int(i64::MIN)),
            ("9223372036854775808", big("9223372036854775808")),
            ("-9223372036854775809", big("-9223372036854775809")),
            ("+1_0000000000_0000000000", big("100000000000000000000")),
            ("1.5", Value::Float(1.5)),
            ("1e9", Value::Float(1e9)),
            ("-2.5E-3", Value::Float(-2.5e-3)),
            ("1E+2", Value::Float(100.0)),
            (".5", Value::Float(0.5)),
            ("-.5", Value::Float(-0.5)),
            ("5.", Value::Float(5.0)),
            ("5.e1", Value::Float(50.0)),
            ("012.5", Value::Float(12.5)),
            ("1_0.2_5e1_0", Value::Float(10.25e10)),
            ("1e999", Value::Float(f64::INFINITY)),
            ("-0.0", Value::Float(-0.0)),
        ] {
            assert_eq!(ok(src), want, "{src}");
        }
        for src in [
            "1__0",
            "1_",
            "012",
            "00_7",
            "1e",
            "1e+",
            "1.2.3",
            "0x",
            "0xg",
            "0b2",
            "0x_",
            "-",
            "+",
            ".",
            "1x",
            "1e5x",
            "._5",
            "1._5",
            "1_.5",
            "0x8000000000000000",
            "-0x8000000000000001",
            "0o8",
            "1.e_1",
            "-.",
            "-x",
        ] {
            assert_eq!(fail(src.as_bytes()), (ErrorKind::BadNumber, 0), "{src}");
        }
    }

    #[test]
    fn huge_integers_are_linear() {
        let digits = format!("1{}", "0".repeat(9_999));
        let started = std::time::Instant::now();
        assert_eq!(ok(&digits), Value::BigInt(digits.clone()));
        let neg = format!("-{digits}");
        assert_eq!(ok(&neg), Value::BigInt(neg.clone()));
        let million = format!("-9{}", "8_7".repeat(333_333));
        let (v, end, _) = parse(million.as_bytes()).unwrap();
        assert_eq!(end, million.len());
        assert!(matches!(v, Value::BigInt(d) if d.len() == 1 + 1 + 2 * 333_333));
        assert!(started.elapsed().as_secs() < 5);
    }

    #[test]
    fn containers() {
        let list = |items: &[Value]| Value::List(items.to_vec());
        let one = Value::Int(1);
        let two = Value::Int(2);
        assert_eq!(ok("[]"), list(&[]));
        assert_eq!(ok("()"), list(&[]));
        assert_eq!(ok("{}"), dict(&[]));
        assert_eq!(ok("(1,)"), list(std::slice::from_ref(&one)));
        assert_eq!(ok("( 1 , 2 , )"), list(&[one.clone(), two.clone()]));
        assert_eq!(ok("[1,2,]"), list(&[one.clone(), two.clone()]));
        assert_eq!(ok("{'a':1,}"), dict(&[("a", one.clone())]));
        assert_eq!(
            ok("{'a': [1, (2, {'b': ()})], \"c\": {}}"),
            dict(&[
                (
                    "a",
                    list(&[one.clone(), list(&[two.clone(), dict(&[("b", list(&[]))])])])
                ),
                ("c", dict(&[])),
            ])
        );
        assert_eq!(
            ok("[\n  {\"a\": 1},\r\n\t{\"a\": 2}\n]"),
            list(&[dict(&[("a", one.clone())]), dict(&[("a", two.clone())])])
        );
        assert_eq!(
            ok("{b'k': u'v', U\"w\": 1}"),
            dict(&[("k", s("v")), ("w", one.clone())])
        );
        for (src, offset) in [
            ("[,]", 1),
            ("[1,,2]", 3),
            ("[1 2]", 3),
            ("{'a' 1}", 5),
            ("{'a': 1 'b': 2}", 8),
            ("[1}", 2),
            ("{,}", 1),
            ("(1]", 2),
        ] {
            assert_eq!(
                fail(src.as_bytes()),
                (ErrorKind::UnexpectedChar, offset),
                "{src}"
            );
        }
    }

    #[test]
    fn duplicate_keys_last_wins_at_first_position() {
        let src = "{'a': 1, 'b': 2, 'a': 3}";
        assert_eq!(ok(src), dict(&[("a", Value::Int(3)), ("b", Value::Int(2))]));
        // Past DICT_SCAN_MAX the hash index takes over; same semantics.
        let mut src = String::from("{");
        for i in 0..100 {
            src.push_str(&format!("'k{}': {i}, ", i % 40));
        }
        src.push('}');
        let Value::Dict(entries) = ok(&src) else {
            panic!()
        };
        assert_eq!(entries.len(), 40);
        for (i, (k, v)) in entries.iter().enumerate() {
            assert_eq!(
                (k.clone(), v.clone()),
                (
                    format!("k{i}"),
                    Value::Int(i as i64 + 80 - if i < 20 { 0 } else { 40 })
                )
            );
        }
    }

    #[test]
    fn errors_have_codes_and_offsets() {
        assert_eq!(
            fail(b"{'message': 'hel"),
            (ErrorKind::UnterminatedString, 16)
        );
        assert_eq!(
            fail(b"{'message': 'hel\\"),
            (ErrorKind::UnterminatedString, 17)
        );
        assert_eq!(fail(b"{'a': 1"), (ErrorKind::UnexpectedEof, 7));
        assert_eq!(fail(b"{'a': 1,"), (ErrorKind::UnexpectedEof, 8));
        assert_eq!(fail(b"{'a':"), (ErrorKind::UnexpectedEof, 5));
        assert_eq!(fail(b""), (ErrorKind::UnexpectedEof, 0));
        assert_eq!(fail(b"  \n "), (ErrorKind::UnexpectedEof, 4));
        assert_eq!(fail(b"{1: 2}"), (ErrorKind::NonStringKey, 1));
        assert_eq!(fail(b"{'a': 1, (1,): 2}"), (ErrorKind::NonStringKey, 9));
        assert_eq!(fail(b"{None: 2}"), (ErrorKind::NonStringKey, 1));
        assert_eq!(fail(b"{@: 2}"), (ErrorKind::UnexpectedChar, 1));
        assert_eq!(
            fail(b"{'a': __import__('os')}"),
            (ErrorKind::UnexpectedChar, 6)
        );
        assert_eq!(fail(b"{'a': \xff}"), (ErrorKind::UnexpectedChar, 6));
        assert_eq!(fail(b"{'a': r'x'}"), (ErrorKind::UnexpectedChar, 6));
        // A truncated line must not swallow the next one.
        assert_eq!(
            fail(b"{'a': 'hel\n{'b': 2}\n"),
            (ErrorKind::UnterminatedString, 10)
        );
        assert_eq!(
            fail(b"{'a': \"hel\n\"}"),
            (ErrorKind::UnterminatedString, 10)
        );

        let (v, end, _) = parse(b"{'a': 1} trailing").unwrap();
        assert_eq!((v, end), (dict(&[("a", Value::Int(1))]), 8));

        let e = ParseError {
            kind: ErrorKind::UnterminatedString,
            offset: 17,
        };
        assert_eq!(e.to_string(), "unterminated string at byte 17");
        assert_eq!(e.kind.code(), "unterminated_string");
        let codes: HashSet<_> = [
            ErrorKind::UnexpectedEof,
            ErrorKind::UnexpectedChar,
            ErrorKind::UnterminatedString,
            ErrorKind::BadEscape,
            ErrorKind::BadNumber,
            ErrorKind::NonStringKey,
            ErrorKind::TooDeep,
            ErrorKind::ExpectedDict,
        ]
        .iter()
        .map(|k| k.code())
        .collect();
        assert_eq!(codes.len(), 8);
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.to_string().ends_with("byte 17"));
    }

    #[test]
    fn parse_dict_and_start_offsets() {
        let limits = Limits::default();
        let mut d = Drops::default();
        let input = b"{'a': 1}\n  {\"b\": [2]} tail";
        let (entries, end) = parse_dict(input, 0, &limits, &mut d).unwrap();
        assert_eq!((entries, end), (vec![("a".to_string(), Value::Int(1))], 8));
        let (entries, end) = parse_dict(input, end, &limits, &mut d).unwrap();
        assert_eq!(
            (entries, end),
            (
                vec![("b".to_string(), Value::List(vec![Value::Int(2)]))],
                21
            )
        );
        let e = parse_dict(input, end, &limits, &mut d).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::ExpectedDict, 22));
        for (src, offset) in [(&b"[1]"[..], 0), (b"  'x'", 2), (b"None", 0)] {
            let e = parse_dict(src, 0, &limits, &mut d).unwrap_err();
            assert_eq!((e.kind, e.offset), (ErrorKind::ExpectedDict, offset));
        }
        let e = parse_dict(b"  ", 0, &limits, &mut d).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::UnexpectedEof, 2));
        let e = parse_value(b"[1]", 99, &limits, &mut d).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::UnexpectedEof, 3));
        assert_eq!(d, Drops::default());

        let mut total = dr(1, 2, 3);
        total.add(&dr(10, 20, 30));
        assert_eq!((total, total.total()), (dr(11, 22, 33), 66));
    }

    #[test]
    fn depth_limit() {
        let limits = Limits { max_depth: 3 };
        let mut d = Drops::default();
        assert!(parse_value(b"[[{'a': 1}]]", 0, &limits, &mut d).is_ok());
        let e = parse_value(b"[[{'a': []}]]", 0, &limits, &mut d).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::TooDeep, 8));
        let e = parse_value(b"[]", 0, &Limits { max_depth: 0 }, &mut d).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::TooDeep, 0));
        assert_eq!(Limits::default().max_depth, 64);
    }

    #[test]
    fn hostile_nesting_does_not_overflow_the_stack() {
        let worker = std::thread::Builder::new().stack_size(2 << 20).spawn(|| {
            let n = 100_000;
            let lists = format!("{}{}", "[".repeat(n), "]".repeat(n));
            let dicts = format!("{}1{}", "{'a': ".repeat(n), "}".repeat(n));
            let tuples = "(".repeat(n);
            for input in [lists, dicts, tuples] {
                let mut d = Drops::default();
                let e = parse_value(input.as_bytes(), 0, &Limits::default(), &mut d).unwrap_err();
                assert_eq!(e.kind, ErrorKind::TooDeep);
                assert!(e.offset < 64 * 6 + 1);
            }
        });
        worker.unwrap().join().unwrap();
    }

    #[test]
    fn renders_like_python() {
        let v = dict(&[
            ("a", Value::Int(-1)),
            (
                "b",
                Value::List(vec![Value::Float(1.0), Value::Null, Value::Bool(true)]),
            ),
            ("c", s("it's")),
            ("d", s("it's \"x\"\\")),
            ("e", s("\u{1b}\u{85}\u{a0}\u{2028}\u{feff}\u{f0000}한\n")),
            ("f", Value::BigInt("-123456789012345678901".into())),
        ]);
        assert_eq!(
            to_python(&v),
            r#"{'a': -1, 'b': [1.0, None, True], 'c': "it's", 'd': 'it\'s "x"\\', 'e': '\x1b\x85\xa0\u2028\ufeff\U000f0000한\n', 'f': -123456789012345678901}"#
        );
        assert_eq!(
            to_json(&v, false),
            "{\"a\": -1, \"b\": [1.0, null, true], \"c\": \"it's\", \"d\": \"it's \\\"x\\\"\\\\\", \"e\": \"\\u001b\u{85}\u{a0}\u{2028}\u{feff}\u{f0000}한\\n\", \"f\": -123456789012345678901}"
        );
        assert_eq!(
            to_json(&s("한😀\u{7f}\u{8}\u{c}\r\t/"), true),
            r#""\ud55c\ud83d\ude00\u007f\b\f\r\t/""#
        );
        for (f, want) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (123.0, "123.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(to_python(&Value::Float(f)), want);
        }
        assert_eq!(to_json(&Value::Float(f64::NAN), true), "NaN");
        assert_eq!(to_json(&Value::Float(f64::NEG_INFINITY), true), "-Infinity");
    }

    fn text_char() -> impl Strategy<Value = char> {
        prop_oneof![
            3 => any::<char>().prop_filter("controls are dropped by design", |c| !is_dropped_control(*c)),
            2 => prop::sample::select(vec![
                '\'', '"', '{', '}', '[', ']', '(', ')', ':', ',', '\\', '\n', '\t', ' ', 'u', 'x',
                'b', '0', '한', '글', '😀', '©', '\u{a0}', '\u{ad}', '\u{2028}', '\u{feff}', '\u{ffff}',
            ]),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(text_char(), 0..12).prop_map(|chars| chars.into_iter().collect())
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
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
                prop::collection::vec((text(), inner), 0..6).prop_map(|entries| {
                    let mut seen = HashSet::new();
                    Value::Dict(
                        entries
                            .into_iter()
                            .filter(|(k, _)| seen.insert(k.clone()))
                            .collect(),
                    )
                }),
            ]
        })
    }

    fn grammar_soup() -> impl Strategy<Value = Vec<u8>> {
        let alphabet =
            b"{}[](),:'\"\\ \n\r\tuUbBxX0179aefEe.-+_TrueNn\xc2\x85\xed\xa0\xff".to_vec();
        prop::collection::vec(prop::sample::select(alphabet), 0..256)
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn roundtrips_through_python_and_json(v in value()) {
            for rendered in [to_python(&v), to_json(&v, false), to_json(&v, true)] {
                let (back, end, drops) = parse(rendered.as_bytes()).map_err(|e| TestCaseError::fail(format!("{rendered}: {e}")))?;
                prop_assert_eq!(&back, &v, "{}", rendered);
                prop_assert_eq!((end, drops), (rendered.len(), Drops::default()));
            }
            prop_assert!(to_json(&v, true).is_ascii());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            never_panics(&bytes);
        }

        #[test]
        fn grammar_soup_never_panics(bytes in grammar_soup()) {
            never_panics(&bytes);
        }

        #[test]
        fn damaged_records_never_panic(v in value(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = to_python(&v).into_bytes();
            let at = cut.index(bytes.len() + 1);
            never_panics(&bytes[..at]);
            if at < bytes.len() {
                bytes[at] = byte;
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
        let limits = Limits::default();
        for line in lines {
            let iterations = 1_000_000;
            let started = std::time::Instant::now();
            for _ in 0..iterations {
                let mut drops = Drops::default();
                let parsed = parse_dict(std::hint::black_box(line), 0, &limits, &mut drops);
                std::hint::black_box((parsed.is_ok(), drops));
            }
            let secs = started.elapsed().as_secs_f64();
            let mb_per_s = (line.len() * iterations) as f64 / secs / 1e6;
            let ns = secs * 1e9 / iterations as f64;
            println!(
                "{mb_per_s:7.0} MB/s {ns:6.0} ns/line {:4} B  {}",
                line.len(),
                String::from_utf8_lossy(line)
            );
        }
    }
}
