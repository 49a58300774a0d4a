//! Cleaning of raw bytes that did not go through the literal parser (CSV fields, raw text).
//!
//! The same rules as string decoding in [`super::literal`]: invalid UTF-8 is dropped, a
//! surrogate encoded in UTF-8 form (`ED A0..BF xx`, what Python's `surrogatepass` writes) counts
//! as a lone surrogate unless it is the high half of a pair, which gives the character the pair
//! encodes; control characters other than `\n` and `\t` are dropped.

use super::literal::Drops;

/// True for characters that are dropped from every string.
pub fn is_dropped_control(c: char) -> bool {
    let u = c as u32;
    (u < 0x20 && c != '\n' && c != '\t') || (0x7f..=0x9f).contains(&u)
}

/// Decodes `bytes` as UTF-8, dropping what cannot be stored and counting it.
pub fn clean_bytes(bytes: &[u8], drops: &mut Drops) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_clean(&mut out, s, drops);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // SAFETY-free: `good` is valid UTF-8 by construction of valid_up_to.
                push_clean(
                    &mut out,
                    std::str::from_utf8(good).unwrap_or_default(),
                    drops,
                );
                let n = e.error_len().unwrap_or(bad.len());
                if let Some((len, pair)) = utf8_surrogate(bad) {
                    match pair {
                        Some(c) => out.push(c),
                        None => drops.lone_surrogates += 1,
                    }
                    rest = &bad[len..];
                } else {
                    drops.invalid_bytes += n as u64;
                    rest = &bad[n..];
                }
            }
        }
    }
    out
}

/// The surrogate in UTF-8 form (`ED A0..BF xx`, what Python's `surrogatepass` writes) that
/// `bad` starts with, as the bytes it takes and what it gives: a high surrogate followed by a
/// low one is a valid pair, 6 bytes giving the character they encode (as an escaped pair does);
/// any other is a lone surrogate, 3 bytes giving nothing. `None` when `bad` starts otherwise.
pub fn utf8_surrogate(bad: &[u8]) -> Option<(usize, Option<char>)> {
    let unit = |b: &[u8]| match *b {
        [0xED, b1 @ 0xA0..=0xBF, b2 @ 0x80..=0xBF, ..] => {
            Some(0xD000 | (u32::from(b1 & 0x3F) << 6) | u32::from(b2 & 0x3F))
        }
        _ => None,
    };
    let high = unit(bad)?;
    if (0xD800..0xDC00).contains(&high)
        && let Some(low) = unit(&bad[3..])
        && (0xDC00..0xE000).contains(&low)
    {
        return Some((
            6,
            char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)),
        ));
    }
    Some((3, None))
}

/// Appends `s` without the dropped control characters.
fn push_clean(out: &mut String, s: &str, drops: &mut Drops) {
    if !s.chars().any(is_dropped_control) {
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

/// The raw text of a line for the rejects file: valid UTF-8 as is, invalid bytes as `\xNN`.
pub fn escape_raw(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len());
                for b in &bad[..n] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                rest = &bad[n..];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_invalid_bytes_surrogates_and_controls() {
        let mut d = Drops::default();
        let s = clean_bytes(b"a\xffb\xed\xb3\xa3c\x03d\te\nf\x1b[3~", &mut d);
        assert_eq!(s, "abcd\te\nf[3~");
        assert_eq!(d.invalid_bytes, 1);
        assert_eq!(d.lone_surrogates, 1);
        assert_eq!(d.control_chars, 2);
    }

    #[test]
    fn surrogates_in_utf8_form_are_lone_or_a_pair() {
        // Every surrogate, alone: one lone surrogate, and the text around it kept.
        for u in 0xD800u32..=0xDFFF {
            let b = [
                0xED,
                0x80 | ((u >> 6) & 0x3F) as u8,
                0x80 | (u & 0x3F) as u8,
            ];
            assert_eq!(utf8_surrogate(&b), Some((3, None)), "{u:x}");
            let mut d = Drops::default();
            assert_eq!(
                clean_bytes(&[b"a".as_slice(), &b, b"b"].concat(), &mut d),
                "ab"
            );
            assert_eq!((d.lone_surrogates, d.invalid_bytes), (1, 0), "{u:x}");
        }
        // A high and a low one: the character they encode, as "\ud83d\ude00" gives.
        let mut d = Drops::default();
        assert_eq!(clean_bytes(b"A\xed\xa0\xbd\xed\xb8\x80B", &mut d), "A😀B");
        assert_eq!(d, Drops::default());
        // Reversed, or a high one at the end: two lone ones, one lone one.
        assert_eq!(utf8_surrogate(b"\xed\xb8\x80\xed\xa0\xbd"), Some((3, None)));
        let mut d = Drops::default();
        assert_eq!(clean_bytes(b"\xed\xb8\x80\xed\xa0\xbd\xed\xa0", &mut d), "");
        assert_eq!((d.lone_surrogates, d.invalid_bytes), (2, 2));
        // Not a surrogate: ED 9F BF is U+D7FF, valid; ED C0 is invalid.
        assert_eq!(utf8_surrogate(b"\xed\x9f\xbf"), None);
        assert_eq!(utf8_surrogate(b"\xed\xc0\x80"), None);
    }

    #[test]
    fn keeps_hangul_and_emoji() {
        let mut d = Drops::default();
        assert_eq!(
            clean_bytes("안녕 😀 {'\"}".as_bytes(), &mut d),
            "안녕 😀 {'\"}"
        );
        assert_eq!(d, Drops::default());
    }

    #[test]
    fn escapes_raw_invalid_bytes() {
        assert_eq!(
            escape_raw(b"ok \xff\xfe \xed\xa0"),
            "ok \\xff\\xfe \\xed\\xa0"
        );
        assert_eq!(escape_raw("한글".as_bytes()), "한글");
    }
}
