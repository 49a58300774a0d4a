//! Puts a run's rows into sorted order by scattering them.
//!
//! `arrow_select::interleave` gathers: it walks the output in order and fetches each row from
//! wherever it is. Sorting a stretch of the day by sender makes that fetch a cache miss for
//! nearly every value of every column, since a sender's rows are hundreds of rows apart and a run
//! is larger than the cache (it was a quarter of write's time). Scattering walks each source
//! column once in its own order and stores each value at its destination; reads are sequential,
//! and the writes go to one moving spot per sender, which the cache holds.
//!
//! Text is copied in a second pass, once the lengths give every row's place; looking that place
//! up is again a fetch from wherever the row goes. When the rows come in groups (a run's
//! senders) whose rows mostly keep their own order (a day logged in time order), a cursor per
//! group knows the place of the group's next row, and the lookup is left for the rows that
//! break the order, with their places fetched a few rows ahead.
//!
//! The result is equal to what `interleave` gives (the same values and nulls; the bytes under a
//! null string and an all-valid null buffer are left out), cut into batches of `chunk_rows`.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType, UInt8Type, UInt32Type};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, PrimitiveArray, RecordBatch, StringArray};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, SchemaRef, TimeUnit};

use crate::error::{Error, Result};

/// The rows of `batches` in `order` (every row exactly once, as (batch, row) pairs), as
/// batches of at most `chunk_rows` rows with `schema`. `groups`, when given, is a group number
/// for every row (one vector per batch); it makes the copy faster when rows of a group mostly
/// follow each other in the order, changes nothing else, and is ignored if it does not fit.
pub fn reorder(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    order: &[(usize, usize)],
    groups: Option<&[Vec<u32>]>,
    chunk_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let n = order.len();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows != n || u32::try_from(n).is_err() {
        return Err(Error::Internal(format!(
            "reorder: {n} positions for {rows} rows"
        )));
    }
    if let Some(b) = batches
        .iter()
        .find(|b| b.schema().fields() != schema.fields())
    {
        return Err(Error::Internal(format!(
            "reorder: a batch with columns {:?} where {:?} were expected",
            b.schema().fields(),
            schema.fields()
        )));
    }
    let chunk_rows = chunk_rows.max(1);
    let dest = destinations(batches, order)?;
    // Group numbers, one per row and below the row count, with how many there are; or none.
    let groups = groups
        .filter(|g| {
            g.len() == batches.len() && g.iter().zip(batches).all(|(g, b)| g.len() == b.num_rows())
        })
        .and_then(|g| {
            let count = g.iter().flatten().max().map_or(0, |&m| m as usize + 1);
            (count <= n).then_some((g, count))
        });
    let mut columns: Vec<Vec<ArrayRef>> = Vec::with_capacity(schema.fields().len());
    for (ci, field) in schema.fields().iter().enumerate() {
        let cols: Vec<&dyn Array> = batches.iter().map(|b| b.column(ci).as_ref()).collect();
        let chunks = match field.data_type() {
            DataType::Utf8 => {
                let strings: Vec<&StringArray> = cols.iter().map(|c| c.as_string()).collect();
                scatter_strings(&strings, &dest, groups, chunk_rows)?
            }
            DataType::UInt32 => {
                let values: Vec<_> = cols
                    .iter()
                    .map(|c| c.as_primitive::<UInt32Type>())
                    .collect();
                scatter_primitive(&values, &dest, chunk_rows, field.data_type())
            }
            DataType::UInt8 => {
                let values: Vec<_> = cols.iter().map(|c| c.as_primitive::<UInt8Type>()).collect();
                scatter_primitive(&values, &dest, chunk_rows, field.data_type())
            }
            DataType::Int64 => {
                let values: Vec<_> = cols.iter().map(|c| c.as_primitive::<Int64Type>()).collect();
                scatter_primitive(&values, &dest, chunk_rows, field.data_type())
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                let values: Vec<_> = cols
                    .iter()
                    .map(|c| c.as_primitive::<TimestampMicrosecondType>())
                    .collect();
                scatter_primitive(&values, &dest, chunk_rows, field.data_type())
            }
            _ => order
                .chunks(chunk_rows)
                .map(|picks| {
                    arrow_select::interleave::interleave(&cols, picks)
                        .map_err(|e| Error::Internal(format!("interleave: {e}")))
                })
                .collect::<Result<_>>()?,
        };
        columns.push(chunks);
    }
    let mut out = Vec::with_capacity(n.div_ceil(chunk_rows));
    for k in 0..n.div_ceil(chunk_rows) {
        let cols = columns.iter().map(|c| c[k].clone()).collect();
        out.push(
            RecordBatch::try_new(schema.clone(), cols)
                .map_err(|e| Error::Internal(format!("reorder: {e}")))?,
        );
    }
    Ok(out)
}

/// `dest[b][i]`: the output position of row `i` of batch `b`.
fn destinations(batches: &[RecordBatch], order: &[(usize, usize)]) -> Result<Vec<Vec<u32>>> {
    let mut dest: Vec<Vec<u32>> = batches
        .iter()
        .map(|b| vec![u32::MAX; b.num_rows()])
        .collect();
    for (pos, &(b, i)) in order.iter().enumerate() {
        let slot = dest
            .get_mut(b)
            .and_then(|d| d.get_mut(i))
            .ok_or_else(|| Error::Internal(format!("reorder: no row {i} in batch {b}")))?;
        *slot = pos as u32;
    }
    // `order` has one position per row; a row given twice leaves another row without one.
    if dest.iter().flatten().any(|&d| d == u32::MAX) {
        return Err(Error::Internal("reorder: a row was given twice".into()));
    }
    Ok(dest)
}

/// Rows ahead of the copy whose place is fetched early.
const PREFETCH_AHEAD: usize = 16;

/// Asks the processor to start loading the cache line at `p`.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of every x86_64 processor, and a prefetch is only a hint: it changes
    // nothing the program can see and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The validity of the output rows, or None when no source row is null.
fn scatter_nulls(cols: &[&dyn Array], dest: &[Vec<u32>], n: usize) -> Option<NullBuffer> {
    if cols.iter().all(|c| c.null_count() == 0) {
        return None;
    }
    let mut bits = vec![0u8; n.div_ceil(8)];
    for (c, d) in cols.iter().zip(dest) {
        let nulls = c.nulls();
        for (i, &pos) in d.iter().enumerate() {
            if nulls.is_none_or(|nb| nb.is_valid(i)) {
                bits[pos as usize / 8] |= 1 << (pos % 8);
            }
        }
    }
    Some(NullBuffer::new(BooleanBuffer::new(
        Buffer::from_vec(bits),
        0,
        n,
    )))
}

/// The validity of output rows `start..start + len`: None when none of them is null.
fn chunk_nulls(nulls: Option<&NullBuffer>, start: usize, len: usize) -> Option<NullBuffer> {
    nulls
        .map(|nb| nb.slice(start, len))
        .filter(|nb| nb.null_count() > 0)
}

fn scatter_primitive<T: ArrowPrimitiveType>(
    cols: &[&PrimitiveArray<T>],
    dest: &[Vec<u32>],
    chunk_rows: usize,
    data_type: &DataType,
) -> Vec<ArrayRef> {
    let n: usize = dest.iter().map(Vec::len).sum();
    let mut values = vec![T::Native::default(); n];
    for (c, d) in cols.iter().zip(dest) {
        for (&v, &pos) in c.values().iter().zip(d) {
            values[pos as usize] = v;
        }
    }
    let dyn_cols: Vec<&dyn Array> = cols.iter().map(|c| *c as &dyn Array).collect();
    let nulls = scatter_nulls(&dyn_cols, dest, n);
    let values = ScalarBuffer::from(values);
    (0..n)
        .step_by(chunk_rows)
        .map(|start| {
            let len = chunk_rows.min(n - start);
            let array = PrimitiveArray::<T>::new(
                values.slice(start, len),
                chunk_nulls(nulls.as_ref(), start, len),
            )
            .with_data_type(data_type.clone());
            Arc::new(array) as ArrayRef
        })
        .collect()
}

fn scatter_strings(
    cols: &[&StringArray],
    dest: &[Vec<u32>],
    groups: Option<(&[Vec<u32>], usize)>,
    chunk_rows: usize,
) -> Result<Vec<ArrayRef>> {
    let n: usize = dest.iter().map(Vec::len).sum();
    let dyn_cols: Vec<&dyn Array> = cols.iter().map(|c| *c as &dyn Array).collect();
    let nulls = scatter_nulls(&dyn_cols, dest, n);
    // A value's bytes, none for a null (whatever bytes its slot holds).
    let span = |c: &StringArray, i: usize| -> (usize, usize) {
        if c.is_null(i) {
            return (0, 0);
        }
        let o = c.value_offsets();
        (o[i] as usize, o[i + 1] as usize)
    };
    // starts[p]: where output row p's bytes begin in one buffer for all rows.
    let mut starts = vec![0usize; n + 1];
    for (c, d) in cols.iter().zip(dest) {
        for (i, &pos) in d.iter().enumerate() {
            if let Some(&ahead) = d.get(i + PREFETCH_AHEAD) {
                prefetch(starts.as_ptr().wrapping_add(ahead as usize + 1));
            }
            let (a, b) = span(c, i);
            starts[pos as usize + 1] = b - a;
        }
    }
    for p in 0..n {
        starts[p + 1] += starts[p];
    }
    // Every byte is written below, each row's bytes exactly once at its place: the buffer is
    // not zeroed first (that was a tenth of this function).
    let total = starts[n];
    let mut bytes: Vec<u8> = Vec::with_capacity(total);
    let out_ptr = bytes.as_mut_ptr();
    let count = groups.map_or(0, |(_, count)| count);
    // Per group: the position its next row takes if the group keeps its order, and where that
    // row's bytes go.
    let mut next_pos = vec![usize::MAX; count];
    let mut next_byte = vec![0usize; count];
    for (bi, (c, d)) in cols.iter().zip(dest).enumerate() {
        let data = c.value_data();
        let group = groups.map(|(g, _)| g[bi].as_slice());
        for (i, &pos) in d.iter().enumerate() {
            // The place of a row a little ahead, in case its group's cursor does not know it.
            if let Some(&ahead) = d.get(i + PREFETCH_AHEAD) {
                prefetch(starts.as_ptr().wrapping_add(ahead as usize));
            }
            let (a, b) = span(c, i);
            let pos = pos as usize;
            let s = match group {
                Some(g) => {
                    let g = g[i] as usize;
                    let s = if next_pos[g] == pos {
                        next_byte[g]
                    } else {
                        starts[pos]
                    };
                    next_pos[g] = pos + 1;
                    next_byte[g] = s + (b - a);
                    s
                }
                None => starts[pos],
            };
            // A row's place is `starts[pos]`, or its group's cursor, which is the same: the
            // cursor is used only when the group's previous row went just before, and it is
            // that row's place plus its length. (Tests run with the debug assertion; checking it
            // here would fetch the place the cursor saves fetching.)
            debug_assert_eq!(s, starts[pos]);
            let value = &data[a..b];
            if s + value.len() > total {
                return Err(Error::Internal("reorder: a row's text out of place".into()));
            }
            // SAFETY: `s..s + value.len()` is inside the buffer's capacity (checked above), and
            // `value` is another allocation's bytes.
            unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), out_ptr.add(s), value.len()) };
        }
    }
    // SAFETY: the rows' places are the running sums of their lengths (`starts`), so their
    // bytes, each copied to its own place above, cover `0..total` exactly.
    unsafe { bytes.set_len(total) };
    let bytes = Buffer::from_vec(bytes);
    let mut out = Vec::with_capacity(n.div_ceil(chunk_rows));
    for start in (0..n).step_by(chunk_rows) {
        let len = chunk_rows.min(n - start);
        let base = starts[start];
        let size = starts[start + len] - base;
        if i32::try_from(size).is_err() {
            return Err(Error::Internal(format!(
                "reorder: {size} bytes of text in {len} rows exceed a string column's offsets"
            )));
        }
        let offsets: Vec<i32> = starts[start..=start + len]
            .iter()
            .map(|&s| (s - base) as i32)
            .collect();
        // SAFETY: the offsets start at 0, never decrease and end at `size`, the length of the
        // values buffer; each value's bytes are a copy of one whole value of a `StringArray`,
        // which is valid UTF-8, and nulls are empty.
        let array = unsafe {
            StringArray::new_unchecked(
                OffsetBuffer::new_unchecked(ScalarBuffer::from(offsets)),
                bytes.slice_with_length(base, size),
                chunk_nulls(nulls.as_ref(), start, len),
            )
        };
        out.push(Arc::new(array) as ArrayRef);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{Field, Schema};
    use proptest::prelude::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("b", DataType::Boolean, true),
            // As the staged records hold a sender's and a source file's id, and a kind's code.
            Field::new("u", DataType::UInt32, true),
            Field::new("k", DataType::UInt8, true),
        ]))
    }

    type Row = (Option<i64>, Option<String>, Option<i64>, Option<bool>);

    fn batch(rows: &[Row]) -> RecordBatch {
        let ts: PrimitiveArray<TimestampMicrosecondType> =
            rows.iter().map(|r| r.0).collect::<PrimitiveArray<_>>();
        let s: StringArray = rows.iter().map(|r| r.1.clone()).collect();
        let n: PrimitiveArray<Int64Type> = rows.iter().map(|r| r.2).collect();
        let b: arrow_array::BooleanArray = rows.iter().map(|r| r.3).collect();
        let u: arrow_array::UInt32Array = rows.iter().map(|r| r.2.map(|v| v as u32)).collect();
        let k: arrow_array::UInt8Array = rows.iter().map(|r| r.2.map(|v| v as u8)).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(ts.with_timezone("UTC")),
                Arc::new(s),
                Arc::new(n),
                Arc::new(b),
                Arc::new(u),
                Arc::new(k),
            ],
        )
        .unwrap()
    }

    proptest! {
        /// Scattering gives the rows `interleave` gathers, in the same chunks; source batches
        /// may be slices (offsets not starting at zero).
        #[test]
        fn scattering_gives_what_interleave_gathers(
            rows in proptest::collection::vec((
                proptest::option::of(-5i64..5),
                proptest::option::of("[a-z가-힣😀]{0,6}"),
                proptest::option::of(any::<i64>()),
                proptest::option::of(any::<bool>()),
            ), 0..120),
            cuts in proptest::collection::vec(0usize..120, 0..4),
            sliced in any::<bool>(),
            seed in any::<u64>(),
            chunk_rows in 1usize..40,
            grouping in 0u8..4,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(rows.len())).collect();
            cuts.push(0);
            cuts.push(rows.len());
            cuts.sort_unstable();
            let batches: Vec<RecordBatch> = cuts
                .windows(2)
                .map(|w| {
                    if sliced {
                        // One row before and after, sliced away.
                        let mut padded = vec![(Some(9), Some("pad".to_string()), Some(0), None)];
                        padded.extend_from_slice(&rows[w[0]..w[1]]);
                        padded.push((None, Some("tail".to_string()), None, Some(true)));
                        batch(&padded).slice(1, w[1] - w[0])
                    } else {
                        batch(&rows[w[0]..w[1]])
                    }
                })
                .collect();
            let mut order: Vec<(usize, usize)> = batches
                .iter()
                .enumerate()
                .flat_map(|(bi, b)| (0..b.num_rows()).map(move |i| (bi, i)))
                .collect();
            // A pseudo-random permutation from the seed.
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            // Groups from the seed, with: no groups; the stable sort by group (the case the
            // group cursors serve); that sort with two rows swapped; a permutation that ignores
            // the groups.
            let groups: Vec<Vec<u32>> = batches
                .iter()
                .enumerate()
                .map(|(bi, b)| (0..b.num_rows()).map(|i| ((seed >> ((bi * 7 + i) % 60)) % 5) as u32).collect())
                .collect();
            if (1..=2).contains(&grouping) {
                order.sort();
                order.sort_by_key(|&(b, i)| groups[b][i]);
            }
            if grouping == 2 && order.len() > 1 {
                // A group's order broken in one place, as by a row without time.
                let n = order.len();
                order.swap((seed % n as u64) as usize, ((seed >> 20) % n as u64) as usize);
            }
            let given = (grouping > 0).then_some(groups.as_slice());
            let got = reorder(&schema(), &batches, &order, given, chunk_rows).unwrap();
            let chunks: Vec<&[(usize, usize)]> = order.chunks(chunk_rows).collect();
            prop_assert_eq!(got.len(), chunks.len());
            for (g, picks) in got.iter().zip(chunks) {
                prop_assert_eq!(g.schema(), schema());
                for ci in 0..g.num_columns() {
                    let arrays: Vec<&dyn Array> =
                        batches.iter().map(|b| b.column(ci).as_ref()).collect();
                    let want = arrow_select::interleave::interleave(&arrays, picks).unwrap();
                    prop_assert_eq!(g.column(ci).to_data(), want.to_data(), "column {}", ci);
                }
            }
        }
    }

    #[test]
    fn an_order_that_is_not_a_permutation_is_an_error() {
        let b = batch(&[(None, None, Some(1), None), (None, None, Some(2), None)]);
        let b = std::slice::from_ref(&b);
        assert!(reorder(&schema(), b, &[(0, 0), (0, 0)], None, 8).is_err());
        assert!(reorder(&schema(), b, &[(0, 0)], None, 8).is_err());
        assert!(reorder(&schema(), b, &[(0, 0), (0, 2)], None, 8).is_err());
        assert!(reorder(&schema(), b, &[(0, 1), (0, 0)], None, 8).is_ok());
    }

    #[test]
    fn batches_of_another_schema_are_an_error() {
        let b = batch(&[(None, None, Some(1), None)]);
        let other = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        assert!(reorder(&other, std::slice::from_ref(&b), &[(0, 0)], None, 8).is_err());
    }

    #[test]
    fn groups_that_do_not_fit_the_rows_are_ignored() {
        let b = batch(&[
            (None, Some("x".into()), Some(1), None),
            (None, Some("yz".into()), None, None),
        ]);
        let b = std::slice::from_ref(&b);
        let want = reorder(&schema(), b, &[(0, 1), (0, 0)], None, 8).unwrap();
        let wrong = [
            vec![vec![0]],
            vec![vec![0, 1], vec![1]],
            vec![vec![3, 3]],
            vec![vec![u32::MAX, 0]],
        ];
        for groups in wrong {
            let got = reorder(&schema(), b, &[(0, 1), (0, 0)], Some(&groups), 8).unwrap();
            assert_eq!(got, want);
        }
    }
}
