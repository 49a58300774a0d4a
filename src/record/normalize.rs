//! Maps a parsed record's fields onto the common schema.
//!
//! For each schema field the first alias (in configured order) present in the record wins; every
//! other key, alias duplicates included, is kept in `extra` as JSON so nothing is silently lost.
//! A time that cannot be parsed leaves `ts` null and keeps the raw value in `extra`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use chrono_tz::Tz;

use super::literal::{Value, ValueRef, to_json};
use super::time::{epoch_int_to_micros, epoch_to_micros, parse_time_str};
use super::{Kind, Record, RecordRef};
use crate::config::Settings;

/// Why a parsed record cannot become a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordReject {
    /// No message field.
    MissingMessage,
    /// The message is not a string.
    MessageNotString,
    /// The sender is a list or a dict.
    SenderNotScalar,
}

impl RecordReject {
    /// Stable short code for the rejects file.
    pub fn code(self) -> &'static str {
        match self {
            RecordReject::MissingMessage => "missing_message",
            RecordReject::MessageNotString => "message_not_string",
            RecordReject::SenderNotScalar => "sender_not_scalar",
        }
    }

    /// One sentence for the rejects file.
    pub fn text(self) -> &'static str {
        match self {
            RecordReject::MissingMessage => "the record has no message field",
            RecordReject::MessageNotString => "the record's message is not a string",
            RecordReject::SenderNotScalar => "the record's sender is a list or a dict",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Sender,
    Message,
    Time,
    Room,
    Offset,
}

/// Where a record came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The file's room (used when the record names none).
    pub file_room: &'a str,
    /// The file, relative to the input root.
    pub source_file: &'a str,
    /// 1-based line where the record starts.
    pub line: u64,
    /// Offset from an `offset=N` prefix on the line.
    pub prefix_offset: Option<i64>,
}

/// Normalises records; built once per run from the settings.
#[derive(Debug, Clone)]
pub struct Normalizer {
    aliases: Aliases,
    system_senders: HashSet<String, foldhash::fast::RandomState>,
    /// The first bytes and the lengths (63 for 63 or more) of the system senders: a sender whose
    /// first byte or length is not among them is no system sender, without hashing it.
    system_first: [bool; 256],
    system_lens: u64,
    tz: Tz,
}

type FieldIdx = u8;

/// Key → (field, priority), looked up five times per record: keys of up to 8 bytes compare as
/// one integer among the few aliases of their length (hashing and `memcmp` were a twentieth
/// of a parser thread's time).
#[derive(Debug, Clone, Default)]
struct Aliases {
    /// By key length: (the key's bytes as a zero-padded little-endian integer, field, priority).
    short: [Vec<(u64, FieldIdx, usize)>; 9],
    long: HashMap<String, (FieldIdx, usize), foldhash::fast::RandomState>,
}

impl Aliases {
    /// The key's bytes as a zero-padded little-endian integer (keys of at most 8 bytes). Built
    /// from loads of the key itself, two that overlap: copying the key into a zeroed stack
    /// buffer and loading that back stalled on store forwarding, a third of `normalize_ref`.
    fn word(k: &[u8]) -> u64 {
        let n = k.len();
        match n {
            0 => 0,
            1..=3 => {
                let byte = |i: usize| u64::from(k[i]) << (8 * i);
                byte(0) | byte(n / 2) | byte(n - 1)
            }
            4..=7 => {
                let at =
                    |i: usize| u64::from(u32::from_le_bytes([k[i], k[i + 1], k[i + 2], k[i + 3]]));
                at(0) | at(n - 4) << (8 * (n - 4))
            }
            _ => u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]]),
        }
    }

    /// Adds `key` unless it is already there (the first field and priority listed wins).
    fn insert(&mut self, key: &str, field: FieldIdx, prio: usize) {
        if self.get(key).is_some() {
            return;
        }
        match self.short.get_mut(key.len()) {
            Some(list) => list.push((Self::word(key.as_bytes()), field, prio)),
            None => {
                self.long.insert(key.to_string(), (field, prio));
            }
        }
    }

    #[inline]
    fn get(&self, key: &str) -> Option<(FieldIdx, usize)> {
        match self.short.get(key.len()) {
            Some(list) => {
                let w = Self::word(key.as_bytes());
                list.iter().find(|e| e.0 == w).map(|e| (e.1, e.2))
            }
            None => self.long.get(key).copied(),
        }
    }
}
const FIELDS: [Field; 5] = [
    Field::Sender,
    Field::Message,
    Field::Time,
    Field::Room,
    Field::Offset,
];

impl Normalizer {
    /// Builds a normaliser from aliases, system senders and zone.
    pub fn new(settings: &Settings) -> Normalizer {
        let f = &settings.fields;
        let mut aliases = Aliases::default();
        for (idx, list) in [&f.sender, &f.message, &f.time, &f.room, &f.offset]
            .into_iter()
            .enumerate()
        {
            for (prio, key) in list.iter().enumerate() {
                aliases.insert(key, idx as FieldIdx, prio);
            }
        }
        Normalizer {
            aliases,
            system_senders: settings.system_senders.iter().cloned().collect(),
            system_first: std::array::from_fn(|c| {
                let first = |s: &String| s.as_bytes().first().map(|&f| usize::from(f));
                settings.system_senders.iter().any(|s| first(s) == Some(c))
            }),
            system_lens: settings
                .system_senders
                .iter()
                .fold(0, |m, s| m | 1 << s.len().min(63)),
            tz: settings.tz,
        }
    }

    /// Maps one parsed record onto the schema.
    pub fn normalize(
        &self,
        entries: Vec<(String, Value)>,
        origin: &Origin<'_>,
    ) -> Result<Record, RecordReject> {
        let refs: Vec<(&str, ValueRef<'_>)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), ValueRef::of(v)))
            .collect();
        self.normalize_ref(&refs, origin)
            .map(|r| r.to_owned_record())
    }

    /// Whether `sender` is a configured system sender.
    fn is_system(&self, sender: &str) -> bool {
        let first = sender.as_bytes().first().map_or(0, |&f| usize::from(f));
        self.system_first[first]
            && self.system_lens & 1 << sender.len().min(63) != 0
            && self.system_senders.contains(sender)
    }

    /// Maps one parsed record onto the schema, borrowing its text from `entries` and `origin`.
    pub fn normalize_ref<'a>(
        &self,
        entries: &[(&'a str, ValueRef<'a>)],
        origin: &Origin<'a>,
    ) -> Result<RecordRef<'a>, RecordReject> {
        // best[i] = (priority, index into entries) of the winning alias of field i.
        let mut best: [Option<(usize, usize)>; 5] = [None; 5];
        for (i, &(k, _)) in entries.iter().enumerate() {
            if let Some((field, prio)) = self.aliases.get(k) {
                let slot = &mut best[field as usize];
                if slot.is_none_or(|(p, _)| prio < p) {
                    *slot = Some((prio, i));
                }
            }
        }
        let idx = |f: Field| {
            let pos = FIELDS.iter().position(|x| *x == f).expect("field listed");
            best[pos].map(|(_, i)| i)
        };
        let (si, mi, ti, ri, oi) = (
            idx(Field::Sender),
            idx(Field::Message),
            idx(Field::Time),
            idx(Field::Room),
            idx(Field::Offset),
        );
        match mi.map(|i| entries[i].1) {
            None => return Err(RecordReject::MissingMessage),
            Some(ValueRef::Str(_)) => {}
            Some(_) => return Err(RecordReject::MessageNotString),
        }
        if let Some(ValueRef::Other(Value::List(_) | Value::Dict(_))) = si.map(|i| entries[i].1) {
            return Err(RecordReject::SenderNotScalar);
        }

        let mut sender_id = None;
        let mut message = "";
        let mut ts = None;
        let mut room = None;
        let mut kafka_offset = None;
        let mut extra: Vec<(String, Value)> = Vec::new();
        let mut keep = |k: &str, v: ValueRef<'_>| extra.push((k.to_string(), v.to_value()));
        for (i, &(k, v)) in entries.iter().enumerate() {
            let i = Some(i);
            if i == mi {
                if let ValueRef::Str(s) = v {
                    message = s;
                }
            } else if i == si {
                sender_id = scalar_text(v).map(trim).filter(|s| !s.is_empty());
            } else if i == ti {
                ts = match v {
                    ValueRef::Str(s) => parse_time_str(s, &self.tz),
                    ValueRef::Other(Value::Int(n)) => epoch_int_to_micros(*n),
                    ValueRef::Other(Value::Float(f)) => epoch_to_micros(*f),
                    ValueRef::Other(_) => None,
                };
                if ts.is_none() && !v.is_null() {
                    keep(k, v);
                }
            } else if i == ri {
                match scalar_text(v).map(trim) {
                    Some(s) if !s.is_empty() => room = Some(s),
                    _ if v.is_null() => {}
                    _ => keep(k, v),
                }
            } else if i == oi {
                kafka_offset = match v {
                    ValueRef::Other(Value::Int(n)) => Some(*n),
                    ValueRef::Str(s) => super::trim(s).parse::<i64>().ok(),
                    ValueRef::Other(_) => None,
                };
                if kafka_offset.is_none() && !v.is_null() {
                    keep(k, v);
                }
            } else {
                keep(k, v);
            }
        }
        if sender_id.as_deref() == Some(crate::layout::HIVE_NULL) {
            // Every Hive reader reads this name back as null: store null and keep the name in `extra`.
            keep("sender_id_full", ValueRef::Str(crate::layout::HIVE_NULL));
            sender_id = None;
        } else if let Some(full) = &sender_id
            && let Some(short) = crate::layout::shorten_sender_id(full)
        {
            keep("sender_id_full", ValueRef::Str(full));
            sender_id = Some(Cow::Owned(short));
        }
        let kind = match &sender_id {
            Some(s) if self.is_system(s) => Kind::System,
            _ => Kind::Message,
        };
        Ok(RecordRef {
            ts,
            sender_id,
            message,
            room: room.unwrap_or(Cow::Borrowed(origin.file_room)),
            kafka_offset: kafka_offset.or(origin.prefix_offset),
            kind,
            extra: (!extra.is_empty()).then(|| Cow::Owned(to_json(&Value::Dict(extra), false))),
            source_file: origin.source_file,
            source_line: origin.line,
        })
    }
}

/// Text of a scalar value (numbers and booleans as Python would print them); `None` for null,
/// lists and dicts.
fn scalar_text(v: ValueRef<'_>) -> Option<Cow<'_, str>> {
    match v {
        ValueRef::Str(s) => Some(Cow::Borrowed(s)),
        ValueRef::Other(Value::Int(n)) => Some(Cow::Owned(n.to_string())),
        ValueRef::Other(Value::BigInt(s)) => Some(Cow::Borrowed(s)),
        ValueRef::Other(Value::Float(f)) => Some(Cow::Owned(f.to_string())),
        ValueRef::Other(Value::Bool(b)) => Some(Cow::Borrowed(if *b { "True" } else { "False" })),
        ValueRef::Other(Value::Str(s)) => Some(Cow::Borrowed(s)),
        ValueRef::Other(Value::Null | Value::List(_) | Value::Dict(_)) => None,
    }
}

/// `s` without leading and trailing whitespace, borrowed when it was.
fn trim(s: Cow<'_, str>) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(super::trim(b)),
        Cow::Owned(o) if super::trim(&o).len() == o.len() => Cow::Owned(o),
        Cow::Owned(o) => Cow::Owned(super::trim(&o).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::GlobalArgs;

    #[test]
    fn alias_words_are_the_zero_padded_bytes() {
        let bytes = "tsé사\u{1}\u{ff}zq".as_bytes();
        for start in 0..bytes.len() {
            for n in 0..=8.min(bytes.len() - start) {
                let k = &bytes[start..start + n];
                let mut b = [0u8; 8];
                b[..n].copy_from_slice(k);
                assert_eq!(Aliases::word(k), u64::from_le_bytes(b), "{k:?}");
            }
        }
    }

    fn normalizer() -> Normalizer {
        let args = GlobalArgs {
            tz: Some("Asia/Seoul".into()),
            ..Default::default()
        };
        let env = |k: &str| (k == "CHATETL_CONFIG").then(|| "/dev/null".to_string());
        Normalizer::new(&Settings::load_with(&args, &env).unwrap())
    }

    fn origin() -> Origin<'static> {
        Origin {
            file_room: "lobby",
            source_file: "lobby/chat_2024-10-24.log",
            line: 7,
            prefix_offset: Some(3),
        }
    }

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    #[test]
    fn maps_aliases_and_keeps_the_rest() {
        let entries = vec![
            ("message".into(), s("hi")),
            ("time".into(), s("2024-08-28 12:19:05")),
            ("user".into(), s("  TL ")),
            ("offset".into(), Value::Int(5)),
            ("end".into(), Value::Bool(false)),
            ("sender".into(), s("other")),
        ];
        let r = normalizer().normalize(entries, &origin()).unwrap();
        assert_eq!(r.sender_id.as_deref(), Some("TL"));
        assert_eq!(r.message, "hi");
        assert_eq!(r.ts, Some(1_724_815_145_000_000));
        assert_eq!(r.room, "lobby");
        assert_eq!(r.kafka_offset, Some(5));
        assert_eq!(r.kind, Kind::Message);
        assert_eq!(
            r.extra.as_deref(),
            Some(r#"{"end": false, "sender": "other"}"#)
        );
        assert_eq!(r.source_line, 7);
    }

    #[test]
    fn record_room_wins_prefix_offset_fills_in() {
        let entries = vec![("msg".into(), s("x")), ("chat_room".into(), s("chat3"))];
        let r = normalizer().normalize(entries, &origin()).unwrap();
        assert_eq!(r.room, "chat3");
        assert_eq!(r.kafka_offset, Some(3));
        assert_eq!(r.sender_id, None);
        assert_eq!(r.extra, None);
    }

    #[test]
    fn unparseable_time_goes_to_extra_and_system_senders_are_marked() {
        let entries = vec![
            ("sender".into(), s("[INFO]")),
            ("message".into(), s("User [a] has entered the chat!\n")),
            ("timestamp".into(), s("sometime")),
        ];
        let r = normalizer().normalize(entries, &origin()).unwrap();
        assert_eq!(r.ts, None);
        assert_eq!(r.kind, Kind::System);
        assert_eq!(r.extra.as_deref(), Some(r#"{"timestamp": "sometime"}"#));
    }

    /// The first-byte and length filter before the lookup changes no answer.
    #[test]
    fn system_senders_are_found_whatever_their_first_byte_and_length() {
        let long = "s".repeat(70);
        let listed = ["[INFO]", "bot", "봇", long.as_str(), "x"];
        let joined = listed.join(",");
        let env = |k: &str| match k {
            "CHATETL_CONFIG" => Some("/dev/null".to_string()),
            "CHATETL_SYSTEM_SENDERS" => Some(joined.clone()),
            _ => None,
        };
        let n = Normalizer::new(&Settings::load_with(&GlobalArgs::default(), &env).unwrap());
        for s in listed {
            assert!(n.is_system(s), "{s}");
        }
        let (s69, s71) = ("s".repeat(69), "s".repeat(71));
        for s in [
            "[INFO", "bots", "bo", "봇봇", &s69, &s71, "y", "user001", "INFO",
        ] {
            assert!(!n.is_system(s), "{s}");
        }
        // The defaults.
        let d = normalizer();
        for s in crate::config::default_system_senders() {
            assert!(d.is_system(&s), "{s}");
        }
        assert!(!d.is_system("user001") && !d.is_system("INFO2") && !d.is_system("사용자0"));
    }

    #[test]
    fn hive_null_name_and_long_names_keep_the_full_id_in_extra() {
        let n = normalizer();
        let r = n
            .normalize(
                vec![
                    ("message".into(), s("x")),
                    ("user".into(), s("__HIVE_DEFAULT_PARTITION__")),
                ],
                &origin(),
            )
            .unwrap();
        assert_eq!(r.sender_id, None);
        assert!(r.extra.unwrap().contains("__HIVE_DEFAULT_PARTITION__"));
        let long = "가".repeat(300);
        let r = n
            .normalize(
                vec![("message".into(), s("x")), ("user".into(), s(&long))],
                &origin(),
            )
            .unwrap();
        let short = r.sender_id.unwrap();
        assert!(short.len() < long.len() && short.contains('~'));
        assert!(r.extra.unwrap().contains(&long));
    }

    #[test]
    fn rejects() {
        let n = normalizer();
        let e = n
            .normalize(vec![("user".into(), s("a"))], &origin())
            .unwrap_err();
        assert_eq!(e, RecordReject::MissingMessage);
        let e = n
            .normalize(vec![("message".into(), Value::Int(3))], &origin())
            .unwrap_err();
        assert_eq!(e, RecordReject::MessageNotString);
        let e = n
            .normalize(
                vec![
                    ("message".into(), s("x")),
                    ("user".into(), Value::List(vec![])),
                ],
                &origin(),
            )
            .unwrap_err();
        assert_eq!(e, RecordReject::SenderNotScalar);
    }

    #[test]
    fn numeric_sender_and_empty_sender() {
        let n = normalizer();
        let r = n
            .normalize(
                vec![
                    ("message".into(), s("x")),
                    ("senderId".into(), Value::Int(7)),
                ],
                &origin(),
            )
            .unwrap();
        assert_eq!(r.sender_id.as_deref(), Some("7"));
        let r = n
            .normalize(
                vec![("message".into(), s("x")), ("user".into(), s("   "))],
                &origin(),
            )
            .unwrap();
        assert_eq!(r.sender_id, None);
    }

    proptest::proptest! {
        /// The alias table answers as a map filled with `or_insert` would, for keys of every
        /// length around the 8-byte boundary, empty keys and keys holding NUL bytes.
        #[test]
        fn alias_table_is_a_first_wins_map(
            keys in proptest::collection::vec("[ab\\x00é]{0,11}", 0..40),
            probes in proptest::collection::vec("[ab\\x00é]{0,11}", 0..40),
        ) {
            let mut table = Aliases::default();
            let mut want: HashMap<String, (FieldIdx, usize)> = HashMap::new();
            for (i, k) in keys.iter().enumerate() {
                table.insert(k, (i % 5) as FieldIdx, i);
                want.entry(k.clone()).or_insert(((i % 5) as FieldIdx, i));
            }
            for k in keys.iter().chain(&probes) {
                proptest::prop_assert_eq!(table.get(k), want.get(k).copied(), "key {:?}", k);
            }
        }
    }
}
