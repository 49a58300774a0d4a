//! Checks a record batch that arrow's IPC reader decoded without validating it.
//!
//! `write` reads the staged records with `with_skip_validation`: arrow's own check of a string
//! column runs the standard library's UTF-8 validation over all its text, which was a tenth of
//! write's time. [`check_batch`] checks what `ArrayData::validate_full` checks for the staged
//! schema's types (buffer layout and sizes, null counts, offsets that stay in bounds and never
//! go down, strings that are UTF-8 and start and end on character boundaries), and what
//! `RecordBatch::try_new` checks (column lengths, no nulls where the schema has none), with
//! simdutf8 for the UTF-8. Nothing reads a batch's values before it passed.

use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;

/// Checks every column of `batch`; the error says which column and what is wrong.
pub fn check_batch(batch: &RecordBatch) -> Result<(), String> {
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        check_column(column.as_ref(), batch.num_rows())
            .map_err(|e| format!("column {}: {e}", field.name()))?;
        // What `RecordBatch::try_new` checks and `new_unchecked` does not (`check_column` made
        // the null count true).
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(format!(
                "column {}: nulls in a column without",
                field.name()
            ));
        }
    }
    Ok(())
}

fn check_column(column: &dyn Array, rows: usize) -> Result<(), String> {
    if column.len() != rows {
        return Err(format!("{} values in a batch of {rows} rows", column.len()));
    }
    let data = column.to_data();
    data.validate().map_err(|e| e.to_string())?;
    data.validate_nulls().map_err(|e| e.to_string())?;
    match data.data_type() {
        // An empty string column may have no offsets at all.
        DataType::Utf8 if data.is_empty() => Ok(()),
        DataType::Utf8 => {
            // `validate` checked that the offsets buffer holds len + 1 aligned i32 from `offset`.
            let offsets = &data.buffers()[0].typed_data::<i32>()[data.offset()..][..data.len() + 1];
            check_utf8(offsets, data.buffers()[1].as_slice())
        }
        DataType::Timestamp(..) | DataType::Int64 | DataType::UInt32 | DataType::UInt8 => Ok(()),
        other => Err(format!("unexpected type {other}")),
    }
}

/// Offsets that start at 0 or more, never go down and end within `values`; the text between the
/// first and the last offset is UTF-8, and every offset falls on a character boundary, so that
/// each string is UTF-8 on its own.
fn check_utf8(offsets: &[i32], values: &[u8]) -> Result<(), String> {
    let first = offsets[0];
    if first < 0 {
        return Err(format!("negative offset {first}"));
    }
    let mut prev = first;
    for (i, &o) in offsets.iter().enumerate().skip(1) {
        if o < prev {
            return Err(format!(
                "offset {o} at slot {i} is below the one before, {prev}"
            ));
        }
        prev = o;
    }
    let (first, last) = (first as usize, prev as usize);
    let text = values
        .get(first..last)
        .ok_or_else(|| format!("offset {last} beyond the {} bytes of text", values.len()))?;
    simdutf8::compat::from_utf8(text)
        .map_err(|e| format!("not UTF-8 at byte {}", first + e.valid_up_to()))?;
    for (i, &o) in offsets.iter().enumerate() {
        // A UTF-8 continuation byte (0b10xx_xxxx) is the only kind that starts no character.
        if text
            .get(o as usize - first)
            .is_some_and(|&b| b & 0xC0 == 0x80)
        {
            return Err(format!("string {i} starts or ends inside a character"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
    use std::sync::Arc;

    /// A string array with these raw offsets and bytes, built without arrow's checks.
    fn raw_strings(offsets: &[i32], bytes: &[u8]) -> StringArray {
        // SAFETY (test only): the array is only handed to `check_column`, which reads its
        // buffers as bytes and integers and never as `str`.
        unsafe {
            let offsets = OffsetBuffer::new_unchecked(ScalarBuffer::from(offsets.to_vec()));
            StringArray::new_unchecked(offsets, Buffer::from(bytes.to_vec()), None)
        }
    }

    #[test]
    fn valid_columns_pass() {
        let s = StringArray::from(vec![Some("가나"), None, Some(""), Some("👍 ok")]);
        assert_eq!(check_column(&s, 4), Ok(()));
        let sliced = s.slice(1, 3);
        assert_eq!(check_column(&sliced, 3), Ok(()));
        let n = Int64Array::from(vec![Some(1), None]);
        assert_eq!(check_column(&n, 2), Ok(()));
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(s) as Arc<dyn Array>),
            ("b", Arc::new(Int64Array::from(vec![1, 2, 3, 4]))),
        ])
        .unwrap();
        assert_eq!(check_batch(&batch), Ok(()));
        // A null where the schema has none.
        let schema =
            arrow_schema::Schema::new(vec![arrow_schema::Field::new("m", DataType::Utf8, false)]);
        let nulls = StringArray::from(vec![Some("a"), None]);
        // SAFETY (test only): the batch breaks only the nullability its schema declares.
        let batch =
            unsafe { RecordBatch::new_unchecked(Arc::new(schema), vec![Arc::new(nulls)], 2) };
        assert_eq!(
            check_batch(&batch),
            Err("column m: nulls in a column without".into())
        );
    }

    #[test]
    fn what_arrow_would_refuse_is_refused() {
        // Not UTF-8.
        let e = check_column(&raw_strings(&[0, 2, 3], b"ab\xFF"), 2).unwrap_err();
        assert!(e.contains("not UTF-8 at byte 2"), "{e}");
        // Each piece split inside a character, though the whole text is UTF-8.
        let e = check_column(&raw_strings(&[0, 1, 3], "가".as_bytes()), 2).unwrap_err();
        assert!(
            e.contains("string 1 starts or ends inside a character"),
            "{e}"
        );
        // Offsets going down.
        let e = check_column(&raw_strings(&[0, 3, 1], b"abc"), 2).unwrap_err();
        assert!(e.contains("below the one before"), "{e}");
        // Past the end of the text, or negative (arrow's layout check sees these first).
        let e = check_column(&raw_strings(&[0, 2, 9], b"abc"), 2).unwrap_err();
        assert!(e.contains("Last offset 9"), "{e}");
        let e = check_column(&raw_strings(&[0, 9, 2], b"abc"), 2).unwrap_err();
        assert!(e.contains("below the one before"), "{e}");
        let e = check_column(&raw_strings(&[-1, 2], b"abc"), 1).unwrap_err();
        assert!(e.contains("(-1)"), "{e}");
        // The checks of our own behind arrow's, on their own.
        let e = check_utf8(&[0, 9], b"abc").unwrap_err();
        assert!(e.contains("beyond the 3 bytes"), "{e}");
        let e = check_utf8(&[-1, 2], b"abc").unwrap_err();
        assert!(e.contains("negative offset"), "{e}");
        // A column shorter than its batch.
        let e = check_column(&StringArray::from(vec!["a"]), 2).unwrap_err();
        assert!(e.contains("1 values in a batch of 2 rows"), "{e}");
        // A type the staged schema never has.
        let f = arrow_array::Float64Array::from(vec![1.0]);
        assert!(check_column(&f, 1).unwrap_err().contains("unexpected type"));
    }

    #[test]
    fn ends_on_the_last_byte_and_empty_text_pass() {
        assert_eq!(
            check_column(&StringArray::from(Vec::<&str>::new()), 0),
            Ok(())
        );
        assert_eq!(check_column(&raw_strings(&[0, 0, 0], b""), 2), Ok(()));
        assert_eq!(
            check_column(&raw_strings(&[1, 4], "x가".as_bytes()), 1),
            Ok(())
        );
        // Offsets that do not start at 0 must still start on a character.
        let e = check_column(&raw_strings(&[2, 4], "x가".as_bytes()), 1).unwrap_err();
        assert!(
            e.contains("not UTF-8") || e.contains("inside a character"),
            "{e}"
        );
    }
}
