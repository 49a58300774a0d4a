//! Reads this tool's own Arrow IPC files (the staged records, the runs `write` spills) block by
//! block, each block read straight into a buffer that is not zeroed first.
//!
//! `arrow_ipc::reader::FileReader` zeroes every block's buffer before reading into it, and reads
//! through a `BufReader`: the zeroing alone was 2.6% of `write`, which reads the day twice (the
//! staged records, then its spilled runs).

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::{Buffer, MutableBuffer};
use arrow_ipc::Block;
use arrow_ipc::reader::{FileDecoder, read_footer_length};
use arrow_schema::SchemaRef;

/// An Arrow IPC file stored at `base..base + len` of a file: its schema and its record batches,
/// read one block at a time with positioned reads, so that any number of readers share one
/// descriptor.
pub struct IpcBlocks {
    file: Arc<File>,
    base: u64,
    blocks: Vec<Block>,
    schema: SchemaRef,
    metadata: HashMap<String, String>,
    decoder: FileDecoder,
}

impl IpcBlocks {
    /// Reads the footer of the IPC file at `base..base + len` of `file`.
    ///
    /// # Safety
    ///
    /// The batches are decoded without arrow's validation: the caller either validates every
    /// batch before reading its values (as `write` does with the staged records) or reads files
    /// this process wrote itself (spilled runs).
    pub unsafe fn open(file: Arc<File>, base: u64, len: u64) -> Result<IpcBlocks, String> {
        if len < 10 {
            return Err("too short to be an Arrow IPC file".into());
        }
        let mut trailer = [0u8; 10];
        let end = base.checked_add(len).ok_or("a range past any file's end")?;
        read_at(&file, &mut trailer, end - 10)?;
        let footer_len = read_footer_length(trailer).map_err(|e| e.to_string())? as u64;
        let footer_at = (len - 10)
            .checked_sub(footer_len)
            .ok_or("a footer longer than the file")?;
        let mut footer = vec![0u8; footer_len as usize];
        read_at(&file, &mut footer, base + footer_at)?;
        let footer = arrow_ipc::root_as_footer(&footer).map_err(|e| format!("footer: {e}"))?;
        let schema = footer.schema().ok_or("no schema in the footer")?;
        if !schema.endianness().equals_to_target_endianness() {
            return Err("written on a machine of the other byte order".into());
        }
        let schema: SchemaRef =
            Arc::new(arrow_ipc::convert::try_fb_to_schema(schema).map_err(|e| e.to_string())?);
        if footer.dictionaries().is_some_and(|d| !d.is_empty()) {
            return Err("dictionary batches, which this tool never writes".into());
        }
        let metadata = footer
            .custom_metadata()
            .into_iter()
            .flatten()
            .filter_map(|kv| Some((kv.key()?.to_string(), kv.value()?.to_string())))
            .collect();
        let blocks: Vec<Block> = footer
            .recordBatches()
            .ok_or("no record batches in the footer")?
            .iter()
            .copied()
            .collect();
        for b in &blocks {
            // A block begins with its message's 8-byte prefix, which arrow's decoder reads
            // without checking the length.
            if b.metaDataLength() < 8 {
                return Err("a block too short to hold a message".into());
            }
            let end = u64::try_from(b.offset())
                .ok()
                .zip(u64::try_from(b.metaDataLength()).ok())
                .zip(u64::try_from(b.bodyLength()).ok())
                .and_then(|((o, m), l)| o.checked_add(m)?.checked_add(l));
            if end.is_none_or(|end| end > footer_at) {
                return Err("a block past the end of the file".into());
            }
        }
        // SAFETY: passed on to the caller (see above).
        let decoder = unsafe {
            FileDecoder::new(schema.clone(), footer.version()).with_skip_validation(true)
        };
        Ok(IpcBlocks {
            file,
            base,
            blocks,
            schema,
            metadata,
            decoder,
        })
    }

    /// The file's schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The file's own metadata (the footer's custom metadata).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// How many record batches the file holds.
    pub fn num_batches(&self) -> usize {
        self.blocks.len()
    }

    /// Record batch `i`.
    pub fn batch(&self, i: usize) -> Result<RecordBatch, String> {
        let block = self.blocks.get(i).ok_or("no such block")?;
        // Checked against the file's length in `open`.
        let len = (block.metaDataLength() as u64 + block.bodyLength() as u64) as usize;
        let mut buf = MutableBuffer::try_with_capacity(len).map_err(|e| e.to_string())?;
        let at = self.base + block.offset() as u64;
        let mut done = 0;
        while done < len {
            // SAFETY: the kernel writes at most `len - done` bytes at `done..` of the buffer,
            // whose capacity is at least `len`; nothing reads those bytes before `set_len`.
            let n = unsafe {
                libc::pread(
                    std::os::fd::AsRawFd::as_raw_fd(&*self.file),
                    buf.as_mut_ptr().add(done).cast(),
                    len - done,
                    (at + done as u64) as libc::off_t,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err("the file ends inside a block".into()),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e.to_string());
                    }
                }
            }
        }
        // SAFETY: the loop above wrote all `len` bytes.
        unsafe { buf.set_len(len) };
        self.decoder
            .read_record_batch(block, &Buffer::from(buf))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "a block that holds no record batch".into())
    }

    /// Record batches `range`, in order.
    pub fn batches(
        self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = Result<RecordBatch, String>> {
        range.map(move |i| self.batch(i))
    }
}

/// Fills `buf` from `file` at `at`.
fn read_at(file: &File, buf: &mut [u8], at: u64) -> Result<(), String> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, at).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_ipc::writer::FileWriter;
    use std::io::Write;

    fn batch(n: i64) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from_iter_values(0..n)) as _),
            (
                "s",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("행 {i}")),
                )) as _,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn reads_the_batches_of_an_ipc_file_stored_inside_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"something before").unwrap();
        let mut w = FileWriter::try_new(&mut f, &batch(1).schema()).unwrap();
        for n in [3, 0, 1000] {
            w.write(&batch(n)).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        let end = f.metadata().unwrap().len();
        f.write_all(b"and after").unwrap();
        drop(f);
        let file = Arc::new(File::open(&path).unwrap());
        let base = b"something before".len() as u64;
        let ipc = unsafe { IpcBlocks::open(file.clone(), base, end - base) }.unwrap();
        assert_eq!(ipc.num_batches(), 3);
        assert_eq!(ipc.schema(), &batch(1).schema());
        let got: Vec<RecordBatch> = ipc.batches(1..3).map(Result::unwrap).collect();
        assert_eq!(got, vec![batch(0), batch(1000)]);

        // Cut short: the footer is gone, or a block ends past what is left.
        let short = unsafe { IpcBlocks::open(file.clone(), base, end - base - 1) };
        assert!(short.is_err());
        assert!(unsafe { IpcBlocks::open(file, base, 5) }.is_err());
    }
}
