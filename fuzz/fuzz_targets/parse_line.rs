//! Fuzzes the line parser: locating a record on a line and parsing it with the safe literal
//! parser must never panic, overflow the stack or run away, whatever the bytes.
#![no_main]

use chatetl::record::literal::{Drops, Limits, parse_dict, parse_value, to_json, to_python};
use chatetl::stage::extract::find_record_start;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut drops = Drops::default();
    if let Some(start) = find_record_start(data)
        && let Ok((entries, end)) = parse_dict(data, start, &limits, &mut drops)
    {
        assert!(end <= data.len());
        let v = chatetl::record::literal::Value::Dict(entries);
        // Whatever parsed must render as JSON and parse back to the same value (compared by
        // Debug text so that NaN equals NaN); the Python rendering must not panic.
        let _ = to_python(&v);
        for text in [to_json(&v, false), to_json(&v, true)] {
            let mut d = Drops::default();
            let (again, _) = parse_value(text.as_bytes(), 0, &limits, &mut d)
                .expect("rendered value parses");
            assert_eq!(format!("{again:?}"), format!("{v:?}"));
        }
    }
    let _ = parse_value(data, 0, &limits, &mut drops);
});
