//! Event-time parsing: every form the chat producers write, to UTC microseconds.
//!
//! Accepted: epoch seconds, milliseconds, microseconds or nanoseconds (number or numeric string,
//! with a fraction; the unit is chosen by magnitude), ISO 8601 / RFC 3339 with or without an
//! offset (`T` or space between date and time), `YYYY-MM-DD HH:MM:SS[.ffffff]`,
//! `YYYY-MM-DD HH-MM-SS`, `YYYY/MM/DD HH:MM:SS`, and `time.ctime()` (`Wed Aug 28 12:19:05 2024`).
//! Naive times are wall-clock in the configured zone; an ambiguous wall-clock time (the hour a
//! DST change repeats) takes the earlier instant, a skipped one moves forward by the gap.

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone,
    Timelike,
};
use chrono_tz::Tz;

/// Microseconds since the Unix epoch for a number read as an epoch timestamp.
///
/// Magnitudes pick the unit: below 1e11 seconds (until year 5138), below 1e14 milliseconds,
/// below 1e17 microseconds, else nanoseconds.
pub fn epoch_to_micros(v: f64) -> Option<i64> {
    if !v.is_finite() {
        return None;
    }
    let a = v.abs();
    let micros = if a < 1e11 {
        v * 1e6
    } else if a < 1e14 {
        v * 1e3
    } else if a < 1e17 {
        v
    } else {
        v / 1e3
    };
    // Keep within the range chrono and Arrow readers agree on (years 0001-9999).
    if !(-62_135_596_800e6..=253_402_300_799e6).contains(&micros) {
        return None;
    }
    Some(micros.round() as i64)
}

/// Integer epoch values without going through f64 (exact for large millisecond values).
pub fn epoch_int_to_micros(v: i64) -> Option<i64> {
    let a = v.unsigned_abs();
    let micros = if a < 100_000_000_000 {
        v.checked_mul(1_000_000)?
    } else if a < 100_000_000_000_000 {
        v.checked_mul(1_000)?
    } else if a < 100_000_000_000_000_000 {
        v
    } else {
        v / 1_000
    };
    (-62_135_596_800_000_000..=253_402_300_799_000_000)
        .contains(&micros)
        .then_some(micros)
}

/// Parses a time string; `None` when it is not a recognised form.
pub fn parse_time_str(s: &str, tz: &Tz) -> Option<i64> {
    let s = super::trim(s);
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let b = s.as_bytes();
    // The usual form first, before the scans for numbers below: what `fast_datetime` takes has
    // `:` at 13 and 16, which no number has. Every other date-time goes to the general parser.
    if b.len() >= 19
        && b[4] == b'-'
        && let Some(micros) = fast_datetime(b, tz)
    {
        return Some(micros);
    }
    if b[0].is_ascii_digit() || b[0] == b'-' || b[0] == b'+' {
        if (s.bytes().all(|c| c.is_ascii_digit())
            || (b[0] == b'-' && s[1..].bytes().all(|c| c.is_ascii_digit())))
            && let Ok(i) = s.parse::<i64>()
        {
            return epoch_int_to_micros(i);
        }
        if s.bytes().all(|c| {
            c.is_ascii_digit() || c == b'.' || c == b'-' || c == b'+' || c == b'e' || c == b'E'
        }) && let Ok(f) = s.parse::<f64>()
        {
            return epoch_to_micros(f);
        }
        if s.len() >= 10 && matches!(b[4], b'-' | b'/') {
            return general_datetime(s, tz);
        }
        return None;
    }
    parse_ctime(s, tz)
}

/// Every `YYYY-MM-DD`/`YYYY/MM/DD` form, through `chrono`'s parsers.
fn general_datetime(s: &str, tz: &Tz) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_micros());
    }
    let norm: String;
    let mut t = s;
    if t.as_bytes()[4] == b'/' {
        norm = t.replace('/', "-");
        t = &norm;
    }
    // Offsets: "+09:00", "+0900", "Z" after a T or space separated time.
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(t, fmt) {
            return Some(dt.timestamp_micros());
        }
    }
    if let Some(stripped) = t.strip_suffix('Z').or_else(|| t.strip_suffix(" UTC")) {
        return parse_naive(stripped).map(|n| n.and_utc().timestamp_micros());
    }
    parse_naive(t).and_then(|n| local_to_micros(n, tz))
}

/// The common forms without `chrono`'s format machinery (a third of extract's time otherwise):
/// `YYYY-MM-DD[ T]HH:MM:SS[.f{1,9}]` followed by nothing (naive, in `tz`), `Z`, or an offset
/// `±HH:MM`/`±HHMM`. Anything else (or an invalid field) returns `None` and takes the general path,
/// which gives the same answer for these forms.
fn fast_datetime(b: &[u8], tz: &Tz) -> Option<i64> {
    /// The two digits at `i` as a number.
    fn two(b: &[u8], i: usize) -> Option<u32> {
        let (x, y) = (b[i].wrapping_sub(b'0'), b[i + 1].wrapping_sub(b'0'));
        (x < 10 && y < 10).then(|| u32::from(x) * 10 + u32::from(y))
    }
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b' ' | b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let days = days_of(&b[..10])?;
    let (h, m, sec) = (two(b, 11)?, two(b, 14)?, two(b, 17)?);
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let [b'.', tail @ ..] = rest {
        // The digits, up to a tenth (which makes the form one for the general path).
        let (mut n, mut frac) = (0, 0u64);
        while let Some(d) = tail
            .get(n)
            .map(|c| c.wrapping_sub(b'0'))
            .filter(|&d| d < 10)
        {
            frac = frac * 10 + u64::from(d);
            n += 1;
            if n > 9 {
                return None;
            }
        }
        if n == 0 {
            return None;
        }
        nanos = u32::try_from(frac).ok()? * 10u32.pow(9 - n as u32);
        rest = &tail[n..];
    }
    // Seconds since the epoch of the time read as UTC; within i64 as microseconds for every date
    // chrono has (years up to 262,142).
    let secs = days * 86_400 + i64::from(h * 3600 + m * 60 + sec);
    let micros = secs * 1_000_000 + i64::from(nanos / 1_000);
    let offset_secs = match rest {
        [] => {
            if let Some(offset) = cached_offset(secs, tz) {
                return Some(micros - offset * 1_000_000);
            }
            return local_to_micros(DateTime::from_timestamp(secs, nanos)?.naive_utc(), tz);
        }
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), hh1, hh2, b':', mm1, mm2]
        | [sign @ (b'+' | b'-'), hh1, hh2, mm1, mm2] => {
            let (oh, om) = (num(&[*hh1, *hh2])?, num(&[*mm1, *mm2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let v = (oh * 3600 + om * 60) as i64;
            if *sign == b'-' { -v } else { v }
        }
        _ => return None,
    };
    Some(micros - offset_secs * 1_000_000)
}

thread_local! {
    /// The last `YYYY-MM-DD` read on this thread, valid, and its days since 1970-01-01.
    static LAST_DAY: std::cell::Cell<Option<([u8; 10], i64)>> = const { std::cell::Cell::new(None) };
}

/// The decimal number written by `b`; None when a byte is not a digit.
fn num(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (any separators at 4 and 7); None when it is no
/// date. A day's records share a date or two, so the last one is kept (chrono's date checks were
/// 1% of extract).
fn days_of(b: &[u8]) -> Option<i64> {
    let key: [u8; 10] = b.try_into().ok()?;
    if let Some((_, days)) = LAST_DAY.get().filter(|(k, _)| *k == key) {
        return Some(days);
    }
    let date = NaiveDate::from_ymd_opt(num(&b[0..4])? as i32, num(&b[5..7])?, num(&b[8..10])?)?;
    // 1970-01-01 is day 719,163 counted from 0001-01-01 as day 1.
    let days = i64::from(date.num_days_from_ce()) - 719_163;
    LAST_DAY.set(Some((key, days)));
    Some(days)
}

fn parse_naive(t: &str) -> Option<NaiveDateTime> {
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H-%M-%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d_%H-%M-%S",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return Some(n);
        }
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_time(NaiveTime::MIN))
}

/// `time.ctime()` form: `Wed Aug 28 12:19:05 2024` (day padded with a space or not).
fn parse_ctime(s: &str, tz: &Tz) -> Option<i64> {
    let words: Vec<&str> = s.split_whitespace().collect();
    if words.len() != 5 {
        return None;
    }
    let joined = words.join(" ");
    NaiveDateTime::parse_from_str(&joined, "%a %b %d %H:%M:%S %Y")
        .ok()
        .and_then(|n| local_to_micros(n, tz))
}

thread_local! {
    /// (zone, wall-clock hour as hours since 1970-01-01T00, its UTC offset in seconds) of the
    /// last hour converted on this thread whose every second exists exactly once.
    static HOUR_OFFSET: std::cell::Cell<Option<(Tz, i64, i64)>> = const { std::cell::Cell::new(None) };
}

/// The UTC offset, in seconds, of the wall-clock second `secs` (counted from 1970-01-01T00:00 of
/// the wall clock) when its hour is the one cached on this thread for `tz`.
fn cached_offset(secs: i64, tz: &Tz) -> Option<i64> {
    let hour = secs.div_euclid(3600);
    HOUR_OFFSET
        .get()
        .filter(|&(z, h, _)| z == *tz && h == hour)
        .map(|(_, _, offset)| offset)
}

/// A wall-clock time in `tz` as UTC microseconds.
///
/// A day's records fall in a few hours: the offset of the last plain hour (no DST change in it)
/// is kept per thread, which saves the zone's transition search on nearly every record.
pub fn local_to_micros(n: NaiveDateTime, tz: &Tz) -> Option<i64> {
    let as_utc = n.and_utc();
    if let Some(offset) = cached_offset(as_utc.timestamp(), tz) {
        return Some(as_utc.timestamp_micros() - offset * 1_000_000);
    }
    let hour = as_utc.timestamp().div_euclid(3600);
    let micros = zone_to_micros(n, tz);
    let single_offset = |t: NaiveDateTime| match tz.from_local_datetime(&t) {
        LocalResult::Single(dt) => Some(i64::from(dt.offset().fix().local_minus_utc())),
        _ => None,
    };
    let start = n.date().and_time(NaiveTime::from_hms_opt(n.hour(), 0, 0)?);
    let end = start + chrono::Duration::seconds(3599);
    if let (Some(a), Some(b)) = (single_offset(start), single_offset(end))
        && a == b
    {
        HOUR_OFFSET.set(Some((*tz, hour, a)));
    }
    micros
}

/// [`local_to_micros`] through the zone's rules, without the cache.
fn zone_to_micros(n: NaiveDateTime, tz: &Tz) -> Option<i64> {
    match tz.from_local_datetime(&n) {
        LocalResult::Single(dt) => Some(dt.timestamp_micros()),
        LocalResult::Ambiguous(a, _) => Some(a.timestamp_micros()),
        LocalResult::None => {
            // A time inside a DST gap moves forward by the gap: it is read with the offset in
            // effect before the gap (as Python's `datetime` reads it, fold 0), so times in the
            // gap keep their order and spacing. The hour before is outside any gap but the
            // longest (a whole day, Samoa 2011): step back until the wall clock exists.
            let offset = (1..=48).find_map(|h| {
                tz.from_local_datetime(&(n - chrono::Duration::hours(h)))
                    .latest()
                    .map(|dt| i64::from(dt.offset().fix().local_minus_utc()))
            })?;
            Some(n.and_utc().timestamp_micros() - offset * 1_000_000)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Asia::Seoul;

    fn utc(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    /// The per-hour cache gives what the zone's rules give, minute by minute across DST changes
    /// (Lord Howe's is half an hour) and back and forth between zones.
    #[test]
    fn hour_cache_agrees_with_the_zone_rules() {
        use chrono_tz::{America, Australia, Europe};
        let zones = [
            Seoul,
            America::New_York,
            Europe::London,
            Australia::Lord_Howe,
        ];
        let days = [
            (2024, 3, 9),
            (2024, 3, 30),
            (2024, 4, 6),
            (2024, 10, 5),
            (2024, 11, 2),
        ];
        for (y, m, d) in days {
            let day = NaiveDate::from_ymd_opt(y, m, d)
                .unwrap()
                .and_time(NaiveTime::MIN);
            for minute in (0..3 * 24 * 60).step_by(7) {
                let t = day + chrono::Duration::seconds(minute * 60 + minute % 60);
                for tz in &zones {
                    assert_eq!(local_to_micros(t, tz), zone_to_micros(t, tz), "{t} {tz}");
                }
                let tz = &zones[minute as usize % zones.len()];
                assert_eq!(local_to_micros(t, tz), zone_to_micros(t, tz), "{t} {tz}");
            }
        }
    }

    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        let mut cases = vec![
            "2024-10-24 09:30:00".to_string(),
            "2024-10-24T09:30:00".into(),
            "2024-10-24 09:30:00.5".into(),
            "2024-10-24 09:30:00.123456789".into(),
            "2024-10-24T09:30:00Z".into(),
            "2024-10-24T09:30:00+09:00".into(),
            "2024-10-24 09:30:00-0130".into(),
            "2024-02-29 23:59:59.000001+00:00".into(),
            "2024-03-10 02:30:00".into(),
        ];
        for y in [1, 1970, 2023, 9999] {
            for (mo, d) in [(1, 1), (2, 28), (12, 31), (6, 15)] {
                for (h, mi, se) in [(0, 0, 0), (23, 59, 59), (12, 5, 7)] {
                    cases.push(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02}"));
                    cases.push(format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}.25Z"));
                }
            }
        }
        for tz in [Seoul, chrono_tz::America::New_York, chrono_tz::UTC] {
            for c in &cases {
                let fast = fast_datetime(c.as_bytes(), &tz);
                assert!(fast.is_some(), "{c}");
                assert_eq!(fast, general_datetime(c, &tz), "{c} in {tz}");
            }
        }
        // Forms the fast path leaves to the general one.
        for c in [
            "2024-10-24 09:30",
            "2024-02-30 10:00:00",
            "2024-10-24 09:30:00 UTC",
            "2024-10-24 24:00:00",
            "2024-10-24 09:60:00",
            "2024-10-24 09:30:60",
        ] {
            assert_eq!(fast_datetime(c.as_bytes(), &Seoul), None, "{c}");
        }
    }

    #[test]
    fn naive_forms_are_local_time() {
        let want = utc("2024-08-28T03:19:05Z");
        for s in [
            "2024-08-28 12:19:05",
            "2024-08-28T12:19:05",
            "2024-08-28 12-19-05",
            "2024/08/28 12:19:05",
            "Wed Aug 28 12:19:05 2024",
            " 2024-08-28 12:19:05 ",
        ] {
            assert_eq!(parse_time_str(s, &Seoul), Some(want), "{s}");
        }
        assert_eq!(
            parse_time_str("2024-08-27 14:36:39.979985", &Seoul),
            Some(utc("2024-08-27T05:36:39.979985Z"))
        );
        assert_eq!(
            parse_time_str("2024-08-26T11:25:59.859694", &Seoul),
            Some(utc("2024-08-26T02:25:59.859694Z"))
        );
    }

    #[test]
    fn offsets_are_honoured() {
        let want = utc("2024-08-28T03:19:05Z");
        for s in [
            "2024-08-28T12:19:05+09:00",
            "2024-08-28T03:19:05Z",
            "2024-08-28 12:19:05+0900",
            "2024-08-28T03:19:05.000Z",
            "2024-08-28 03:19:05 UTC",
        ] {
            assert_eq!(parse_time_str(s, &Seoul), Some(want), "{s}");
        }
    }

    #[test]
    fn epochs_by_magnitude() {
        let want = utc("2024-08-28T03:19:05Z");
        assert_eq!(parse_time_str("1724815145", &Seoul), Some(want));
        assert_eq!(parse_time_str("1724815145000", &Seoul), Some(want));
        assert_eq!(parse_time_str("1724815145.5", &Seoul), Some(want + 500_000));
        assert_eq!(epoch_int_to_micros(1_724_815_145_000_000), Some(want));
        assert_eq!(epoch_int_to_micros(1_724_815_145_000_000_000), Some(want));
        assert_eq!(epoch_to_micros(1_724_815_145.25), Some(want + 250_000));
        assert_eq!(epoch_to_micros(f64::NAN), None);
    }

    #[test]
    fn garbage_is_none() {
        for s in [
            "",
            "yesterday",
            "2024-13-45 10:00:00",
            "12:00",
            "Wed Aug 28",
            "1e400",
            "--5",
        ] {
            assert_eq!(parse_time_str(s, &Seoul), None, "{s}");
        }
    }

    #[test]
    fn dst_gap_and_overlap() {
        let ny = chrono_tz::America::New_York;
        // 2024-03-10 02:00-03:00 does not exist in New York: read with the offset before it
        // (EST), in order and evenly spaced; 2024-11-03 01:30 happens twice.
        for (local, want) in [
            ("2024-03-10 01:59:00", "2024-03-10T06:59:00Z"),
            ("2024-03-10 02:00:00", "2024-03-10T07:00:00Z"),
            ("2024-03-10 02:10:00", "2024-03-10T07:10:00Z"),
            ("2024-03-10 02:30:00", "2024-03-10T07:30:00Z"),
            ("2024-03-10 02:50:00", "2024-03-10T07:50:00Z"),
            ("2024-03-10 03:05:00", "2024-03-10T07:05:00Z"),
        ] {
            assert_eq!(parse_time_str(local, &ny), Some(utc(want)), "{local}");
        }
        // Samoa skipped 2011-12-30 whole (UTC-10 to UTC+14).
        let samoa = chrono_tz::Pacific::Apia;
        assert_eq!(
            parse_time_str("2011-12-30 12:00:00", &samoa),
            Some(utc("2011-12-30T22:00:00Z"))
        );
        assert_eq!(
            parse_time_str("2024-11-03 01:30:00", &ny),
            Some(utc("2024-11-03T05:30:00Z"))
        );
    }
}
