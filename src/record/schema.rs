//! The Arrow schema of staged records and of the Parquet files, and a batch builder.
//!
//! Staged records (extract's output) carry every column, `sender_id` included, with the sender
//! and the source file as ids into [`StagedNames`], which the staged file keeps in its footer,
//! and the kind as its code (`Kind as u8`). The Parquet files hold the source file's name and
//! the kind's, and leave `sender_id` out because it is the partition column in the path (Spark
//! refuses a column that is both in the path and in the file).

use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, Int64Builder, PrimitiveBuilder, StringBuilder, TimestampMicrosecondBuilder,
    UInt8Builder, UInt32Builder,
};
use arrow_array::{ArrayRef, ArrowPrimitiveType, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::RecordRef;

/// Column names, in order.
pub const COLUMNS: [&str; 9] = [
    "ts",
    "sender_id",
    "message",
    "room",
    "kafka_offset",
    "kind",
    "extra",
    "source_file",
    "source_line",
];

/// Indexes of the columns that the stages read by place, in [`COLUMNS`] order.
pub const C_TS: usize = 0;
pub const C_SENDER: usize = 1;
pub const C_KIND: usize = 5;
pub const C_FILE: usize = 7;
pub const C_LINE: usize = 8;

/// The key of the staged file's footer metadata that holds its [`StagedNames`] as JSON.
pub const STAGED_NAMES_KEY: &str = "chatetl.names";

/// The names behind the ids of the staged records: `sender_id` i is `senders[i]` and
/// `source_file` i is `files[i]`. A null sender has a slot (`None`) that no row refers to: its
/// rows hold a null id.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StagedNames {
    pub senders: Vec<Option<String>>,
    pub files: Vec<String>,
}

#[cfg(test)]
impl StagedNames {
    /// The id of a sender (None: the null sender, which has no id), given one if new.
    pub fn sender(&mut self, name: Option<&str>) -> Option<u32> {
        let name = name?;
        let at = self.senders.iter().position(|s| s.as_deref() == Some(name));
        Some(at.unwrap_or_else(|| {
            self.senders.push(Some(name.to_string()));
            self.senders.len() - 1
        }) as u32)
    }

    /// The id of a source file, given one if new.
    pub fn file(&mut self, name: &str) -> u32 {
        let at = self.files.iter().position(|f| f == name);
        at.unwrap_or_else(|| {
            self.files.push(name.to_string());
            self.files.len() - 1
        }) as u32
    }
}

/// The schema of staged records (all columns; the sender and the source file as ids, the kind as
/// its code).
pub fn staged_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("sender_id", DataType::UInt32, true),
        Field::new("message", DataType::Utf8, false),
        Field::new("room", DataType::Utf8, false),
        Field::new("kafka_offset", DataType::Int64, true),
        Field::new("kind", DataType::UInt8, false),
        Field::new("extra", DataType::Utf8, true),
        Field::new("source_file", DataType::UInt32, false),
        Field::new("source_line", DataType::Int64, false),
    ]))
}

/// The schema of the Parquet files: the staged schema without `sender_id`, and the source file
/// and the kind by name.
pub fn parquet_schema() -> SchemaRef {
    let s = staged_schema();
    let fields: Vec<Field> = s
        .fields()
        .iter()
        .filter(|f| f.name() != "sender_id")
        .map(|f| match f.name().as_str() {
            "source_file" | "kind" => f.as_ref().clone().with_data_type(DataType::Utf8),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Accumulates records into Arrow columns.
pub struct BatchBuilder {
    ts: TimestampMicrosecondBuilder,
    sender_id: UInt32Builder,
    message: StringBuilder,
    room: StringBuilder,
    kafka_offset: Int64Builder,
    kind: UInt8Builder,
    extra: StringBuilder,
    source_file: UInt32Builder,
    source_line: Int64Builder,
    rows: usize,
    bytes: usize,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new()
    }
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> BatchBuilder {
        BatchBuilder {
            ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            sender_id: UInt32Builder::new(),
            message: StringBuilder::new(),
            room: StringBuilder::new(),
            kafka_offset: Int64Builder::new(),
            kind: UInt8Builder::new(),
            extra: StringBuilder::new(),
            source_file: UInt32Builder::new(),
            source_line: Int64Builder::new(),
            rows: 0,
            bytes: 0,
        }
    }

    /// Appends one record, its sender and source file given ids in `names`.
    #[cfg(test)]
    pub fn push(&mut self, r: &super::Record, names: &mut StagedNames) {
        let (sender, file) = (
            names.sender(r.sender_id.as_deref()),
            names.file(&r.source_file),
        );
        self.push_ref(&r.as_ref(), sender, file);
    }

    /// Appends one borrowed record with the id of its sender (None for a null sender) and of its
    /// source file.
    pub fn push_ref(&mut self, r: &RecordRef<'_>, sender: Option<u32>, file: u32) {
        debug_assert_eq!(sender.is_none(), r.sender_id.is_none());
        self.ts.append_option(r.ts);
        self.sender_id.append_option(sender);
        self.message.append_value(r.message);
        self.room.append_value(&r.room);
        self.kafka_offset.append_option(r.kafka_offset);
        self.kind.append_value(r.kind as u8);
        self.extra.append_option(r.extra.as_deref());
        self.source_file.append_value(file);
        self.source_line.append_value(r.source_line as i64);
        self.rows += 1;
        self.bytes += 64 + r.message.len() + r.room.len() + r.extra.as_ref().map_or(0, |s| s.len());
    }

    /// Rows appended since the last [`BatchBuilder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Builds a batch of everything appended and resets the builder.
    ///
    /// The builders start the next batch with this batch's sizes: growing them from empty again
    /// copied every column several times per batch (reallocations were a tenth of a parser's time).
    pub fn finish(&mut self) -> RecordBatch {
        let rows = self.rows;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(
                std::mem::replace(
                    &mut self.ts,
                    TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
                )
                .finish(),
            ),
            finish_primitive(&mut self.sender_id),
            finish_strings(&mut self.message),
            finish_strings(&mut self.room),
            finish_primitive(&mut self.kafka_offset),
            finish_primitive(&mut self.kind),
            finish_strings(&mut self.extra),
            finish_primitive(&mut self.source_file),
            finish_primitive(&mut self.source_line),
        ];
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(staged_schema(), cols).expect("builder columns match the schema")
    }
}

/// The strings appended so far as an array; the builder starts again with room for as many.
fn finish_strings(b: &mut StringBuilder) -> ArrayRef {
    let fresh = StringBuilder::with_capacity(b.len(), b.values_slice().len());
    Arc::new(std::mem::replace(b, fresh).finish())
}

/// The values appended so far as an array; the builder starts again with room for as many.
fn finish_primitive<T: ArrowPrimitiveType>(b: &mut PrimitiveBuilder<T>) -> ArrayRef {
    let fresh = PrimitiveBuilder::<T>::with_capacity(b.len());
    Arc::new(std::mem::replace(b, fresh).finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Kind, Record};

    #[test]
    fn builder_matches_schema_and_parquet_schema_drops_sender() {
        let mut b = BatchBuilder::new();
        let mut names = StagedNames::default();
        b.push(
            &Record {
                ts: Some(1),
                sender_id: None,
                message: "m".into(),
                room: "r".into(),
                kafka_offset: None,
                kind: Kind::System,
                extra: Some("{}".into()),
                source_file: "f".into(),
                source_line: 1,
            },
            &mut names,
        );
        let batch = b.finish();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema().fields().len(), COLUMNS.len());
        // The null sender has no id; the file has id 0, and its name in the Parquet schema.
        assert!(batch.column(1).is_null(0));
        assert_eq!(names.files, ["f"]);
        assert!(parquet_schema().field_with_name("sender_id").is_err());
        for name in ["source_file", "kind"] {
            let field = parquet_schema().field_with_name(name).unwrap().clone();
            assert_eq!(field.data_type(), &DataType::Utf8, "{name}");
        }
        // A kind's code is its place in `Kind::ALL`, which write reads back.
        for kind in Kind::ALL {
            assert_eq!(Kind::ALL[kind as u8 as usize], kind);
        }
        assert!(b.is_empty());
    }
}
