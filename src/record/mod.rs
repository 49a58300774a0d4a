//! The record model every stage shares: the parsed literal, cleaning, normalisation onto one
//! schema, and the Arrow schema itself.

pub mod check;
pub mod clean;
pub mod literal;
pub mod normalize;
pub mod schema;
pub mod time;

use std::borrow::Cow;

use serde::Serialize;

/// `s.trim()`, without the walk over Unicode's whitespace when `s` begins and ends with a
/// visible ASCII character, as nearly every sender, room and time does (`str::trim` was 2% of
/// extract). Every whitespace character is either ASCII of 0x20 or below, or not ASCII.
#[inline]
pub fn trim(s: &str) -> &str {
    let visible = |c: Option<&u8>| c.is_some_and(|c| (0x21..=0x7e).contains(c));
    if visible(s.as_bytes().first()) && visible(s.as_bytes().last()) {
        s
    } else {
        s.trim()
    }
}

/// Whether a record is a person's message or a system announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A message someone typed.
    Message,
    /// Sent by a configured system sender such as `[INFO]`.
    System,
}

impl Kind {
    /// Every kind, at its code's place: the staged records hold a kind as its code (`as u8`).
    pub const ALL: [Kind; 2] = [Kind::Message, Kind::System];

    /// The value stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::System => "system",
        }
    }
}

/// One chat message on the common schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Event time, UTC microseconds since the epoch.
    pub ts: Option<i64>,
    /// Sender, trimmed; `None` when missing or empty.
    pub sender_id: Option<String>,
    /// Message text, cleaned.
    pub message: String,
    /// The record's room, else its file's room.
    pub room: String,
    /// Kafka offset from the record or an `offset=N` prefix.
    pub kafka_offset: Option<i64>,
    /// Message or system.
    pub kind: Kind,
    /// JSON object text of the fields not mapped onto the schema.
    pub extra: Option<String>,
    /// Input file, relative to the input root.
    pub source_file: String,
    /// 1-based line of the input file where the record starts.
    pub source_line: u64,
}

/// A record on the common schema that borrows its text from the parsed line where it can: what
/// the line parsers stage without copying every field into its own allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordRef<'a> {
    /// Event time, UTC microseconds since the epoch.
    pub ts: Option<i64>,
    /// Sender, trimmed; `None` when missing or empty.
    pub sender_id: Option<Cow<'a, str>>,
    /// Message text, cleaned.
    pub message: &'a str,
    /// The record's room, else its file's room.
    pub room: Cow<'a, str>,
    /// Kafka offset from the record or an `offset=N` prefix.
    pub kafka_offset: Option<i64>,
    /// Message or system.
    pub kind: Kind,
    /// JSON object text of the fields not mapped onto the schema.
    pub extra: Option<Cow<'a, str>>,
    /// Input file, relative to the input root.
    pub source_file: &'a str,
    /// 1-based line of the input file where the record starts.
    pub source_line: u64,
}

impl RecordRef<'_> {
    /// An owned copy.
    pub fn to_owned_record(&self) -> Record {
        Record {
            ts: self.ts,
            sender_id: self.sender_id.as_deref().map(str::to_string),
            message: self.message.to_string(),
            room: self.room.to_string(),
            kafka_offset: self.kafka_offset,
            kind: self.kind,
            extra: self.extra.as_deref().map(str::to_string),
            source_file: self.source_file.to_string(),
            source_line: self.source_line,
        }
    }
}

impl Record {
    /// A borrowed view.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            ts: self.ts,
            sender_id: self.sender_id.as_deref().map(Cow::Borrowed),
            message: &self.message,
            room: Cow::Borrowed(&self.room),
            kafka_offset: self.kafka_offset,
            kind: self.kind,
            extra: self.extra.as_deref().map(Cow::Borrowed),
            source_file: &self.source_file,
            source_line: self.source_line,
        }
    }
}
