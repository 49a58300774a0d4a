//! Cleaning of raw bytes that did not go through the literal parser (CSV fields, raw text).
//!
//! The same rules as string decoding in [`super::literal`]: invalid UTF-8 is dropped, a
//! surrogate encoded in UTF-8 form (`ED A0..BF xx`, what Python's `surrogatepass` writes) counts
//! as a lone surrogate, control characters other than `\n` and `\t` are dropped.

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
                if bad.len() >= 3
                    && bad[0] == 0xED
                    && (0xA0..=0xBF).contains(&bad[1])
                    && (0x80..=0xBF).contains(&bad[2])
                {
                    drops.lone_surrogates += 1;
                    rest = &bad[3..];
                } else {
                    drops.invalid_bytes += n as u64;
                    rest = &bad[n..];
                }
            }
        }
    }
    out
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
