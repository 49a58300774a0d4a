//! Interoperability: the Parquet dataset chatetl writes is read back by real readers (pyarrow,
//! DuckDB, Spark through PySpark, and Polars through its Rust crate) as a Hive dataset with
//! `sender_id` as a string, and each one sees exactly the rows and sender IDs chatetl staged.
//!
//! The Python readers run with the interpreter named by `CHATETL_TEST_PYTHON` (scripts/test
//! creates a virtualenv with pyarrow, duckdb and pyspark and sets it). Without it the Python
//! part is skipped with a message; Polars always runs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type};
use polars::prelude::*;
use serde_json::Value;

type Row = (String, Option<String>, String, i64, String);

fn chatetl(dir: &Path, args: &[&str], codec: Option<&str>) -> Value {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chatetl"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CHATETL_") {
            c.env_remove(k);
        }
    }
    if let Some(codec) = codec {
        c.env("CHATETL_COMPRESSION", codec);
    }
    let o = c
        .args(args)
        .current_dir(dir)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Sender IDs that stress partition escaping, plus null (a record without a sender).
fn hostile_senders() -> Vec<Option<String>> {
    let mut v: Vec<Option<String>> = [
        "a/b",
        "x=1",
        "100%",
        "c:d",
        "#tag",
        "what?",
        "star*",
        "it's",
        "say \"hi\"",
        "back\\slash",
        "[br]",
        "^caret",
        "{curly}",
        "dev ops",
        "하늘",
        "😀 emoji",
        "007",
        "..",
        "%2F",
        "__HIVE_DEFAULT_PARTITION__",
        "ham",
    ]
    .iter()
    .map(|s| Some(s.to_string()))
    .collect();
    v.push(Some("가".repeat(300)));
    v.push(None);
    v
}

/// A dataset chatetl wrote, with what extract staged and reported.
struct Dataset {
    _dir: tempfile::TempDir,
    out: PathBuf,
    /// The rows in the staging file, read independently of the Parquet writer.
    expected: Vec<Row>,
    /// Extract's per-sender record counts (null sender under `__HIVE_DEFAULT_PARTITION__`).
    per_sender: BTreeMap<String, u64>,
}

/// Runs extract + write for `date` on the input tree `setup` fills under `in/`.
/// A dataset written with the default codec, or with `codec`.
fn build(date: &str, codec: Option<&str>, setup: impl FnOnce(&Path)) -> Dataset {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir_all(&input).unwrap();
    setup(&input);
    let out = dir.path().join("out");
    let common = [
        "--input-root",
        "in",
        "--output-root",
        "out",
        "--tz",
        "Asia/Seoul",
        "--json",
    ];
    let mut per_sender = BTreeMap::new();
    for stage in ["extract", "write"] {
        let mut a = common.to_vec();
        a.extend([stage, "--date", date]);
        let v = chatetl(dir.path(), &a, codec);
        if stage == "extract" {
            per_sender = serde_json::from_value(v["summary"]["per_sender"].clone()).unwrap();
        }
    }
    let expected = staged_rows(
        &out.join(format!("_staging/date={date}/records.arrow")),
        date,
    );
    Dataset {
        _dir: dir,
        out,
        expected,
        per_sender,
    }
}

/// The hostile-sender fixture: three messages from each sender in `hostile_senders`.
fn hostile_dataset(codec: Option<&str>) -> Dataset {
    build("2024-10-24", codec, |input| {
        let mut lines = String::new();
        for (i, s) in hostile_senders().iter().enumerate() {
            for k in 0..3 {
                let mut rec = serde_json::json!({
                    "message": format!("message {k} from #{i} {{}} '\""),
                    "time": format!("2024-10-24 1{}:0{k}:00", i % 10),
                    "offset": i * 10 + k,
                });
                if let Some(s) = s {
                    rec["user"] = Value::String(s.clone());
                }
                lines.push_str(&rec.to_string());
                lines.push('\n');
            }
        }
        fs::create_dir_all(input.join("room")).unwrap();
        fs::write(input.join("room/chat_2024-10-24.jsonl"), lines).unwrap();
    })
}

/// The shared corpus (../shared/corpus), each file filed under 2024-08-27 in its project's room.
fn corpus_dataset() -> Option<Dataset> {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    if !corpus.is_dir() {
        eprintln!("skipped corpus: ../shared/corpus is absent");
        return None;
    }
    Some(build("2024-08-27", None, |input| {
        for sub in fs::read_dir(&corpus).unwrap() {
            let sub = sub.unwrap().path();
            if !sub.is_dir() {
                continue;
            }
            let dest = input.join(sub.file_name().unwrap()).join("2024-08-27");
            fs::create_dir_all(&dest).unwrap();
            for f in fs::read_dir(&sub).unwrap() {
                let f = f.unwrap().path();
                fs::copy(&f, dest.join(f.file_name().unwrap())).unwrap();
            }
        }
    }))
}

fn datasets() -> Vec<(&'static str, Dataset)> {
    let hostile = hostile_dataset(None);
    assert_eq!(hostile.expected.len(), hostile_senders().len() * 3);
    let mut v = vec![("hostile senders", hostile)];
    // The other codecs a user may choose (`compression`), on the same fixture.
    for (name, codec) in [
        ("hostile senders, snappy", "snappy"),
        ("hostile senders, lz4", "lz4"),
        ("hostile senders, uncompressed", "none"),
    ] {
        v.push((name, hostile_dataset(Some(codec))));
    }
    if let Some(c) = corpus_dataset() {
        assert!(
            c.expected.len() > 900,
            "corpus staged only {} rows",
            c.expected.len()
        );
        v.push(("corpus", c));
    }
    v
}

/// Checks a reader's rows against the staged rows and extract's per-sender counts.
fn check(reader: &str, name: &str, ds: &Dataset, mut got: Vec<Row>) {
    sort(&mut got);
    assert_eq!(
        got, ds.expected,
        "{reader} read different rows from the {name} dataset"
    );
    let mut counts = BTreeMap::new();
    for r in &got {
        let key =
            r.1.clone()
                .unwrap_or_else(|| "__HIVE_DEFAULT_PARTITION__".to_string());
        *counts.entry(key).or_insert(0u64) += 1;
    }
    assert_eq!(
        counts, ds.per_sender,
        "{reader}: per-sender counts differ from extract's summary"
    );
}

/// The rows extract staged, read independently of the Parquet writer.
/// The staged rows `write` writes: all but those set in the dropped-rows bitmap (exact
/// duplicates; little-endian u64 words, bit `row % 64` of word `row / 64`) that extract.json
/// names.
fn staged_rows(path: &Path, date: &str) -> Vec<Row> {
    let staging = path.parent().unwrap();
    let summary: Value =
        serde_json::from_slice(&fs::read(staging.join("extract.json")).unwrap()).unwrap();
    let dropped: Vec<u8> = match summary["dropped_rows_file"].as_str() {
        Some(name) => fs::read(staging.join(name)).unwrap(),
        None => Vec::new(),
    };
    let is_dropped = |row: usize| {
        dropped
            .get(row / 8)
            .is_some_and(|byte| byte & (1 << (row % 8)) != 0)
    };
    let r = arrow_ipc::reader::FileReader::try_new(fs::File::open(path).unwrap(), None).unwrap();
    // The staged records hold ids of senders and source files; their names are in the footer.
    let names: Value = serde_json::from_str(&r.custom_metadata()["chatetl.names"]).unwrap();
    let name = |list: &str, id: u32| names[list][id as usize].as_str().unwrap().to_string();
    let mut rows = Vec::new();
    let mut row = 0usize;
    for b in r {
        let b = b.unwrap();
        let s = b
            .column_by_name("sender_id")
            .unwrap()
            .as_primitive::<UInt32Type>()
            .clone();
        let f = b
            .column_by_name("source_file")
            .unwrap()
            .as_primitive::<UInt32Type>()
            .clone();
        let l = b
            .column_by_name("source_line")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        let m = b
            .column_by_name("message")
            .unwrap()
            .as_string::<i32>()
            .clone();
        for i in 0..b.num_rows() {
            row += 1;
            if is_dropped(row - 1) {
                continue;
            }
            rows.push((
                date.to_string(),
                (!s.is_null(i)).then(|| name("senders", s.value(i))),
                name("files", f.value(i)),
                l.value(i),
                m.value(i).to_string(),
            ));
        }
    }
    sort(&mut rows);
    rows
}

fn sort(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        (&a.0, a.1.is_some(), &a.1, &a.2, a.3).cmp(&(&b.0, b.1.is_some(), &b.1, &b.2, b.3))
    });
}

/// Polars (Rust crate) lazy scan of `messages/` with `date` and `sender_id` declared String.
fn read_with_polars(messages: &Path) -> Vec<Row> {
    let hive_schema = Schema::from_iter([
        Field::new("date".into(), DataType::String),
        Field::new("sender_id".into(), DataType::String),
    ]);
    let args = ScanArgsParquet {
        hive_options: HiveOptions {
            enabled: Some(true),
            hive_start_idx: 0,
            schema: Some(Arc::new(hive_schema)),
            try_parse_dates: false,
        },
        ..Default::default()
    };
    let glob = format!("{}/**/*.parquet", messages.display());
    let df = LazyFrame::scan_parquet(PlRefPath::new(glob.as_str()), args)
        .unwrap()
        .select([
            col("date"),
            col("sender_id"),
            col("source_file"),
            col("source_line"),
            col("message"),
        ])
        .collect()
        .unwrap();
    let date = df.column("date").unwrap().str().unwrap().clone();
    let sender = df.column("sender_id").unwrap().str().unwrap().clone();
    let file = df.column("source_file").unwrap().str().unwrap().clone();
    let line = df.column("source_line").unwrap().i64().unwrap().clone();
    let msg = df.column("message").unwrap().str().unwrap().clone();
    (0..df.height())
        .map(|i| {
            (
                date.get(i).unwrap().to_string(),
                sender.get(i).map(str::to_string),
                file.get(i).unwrap().to_string(),
                line.get(i).unwrap(),
                msg.get(i).unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn polars_reads_the_hive_dataset_exactly() {
    for (name, ds) in datasets() {
        let got = read_with_polars(&ds.out.join("messages"));
        check("polars", name, &ds, got);
    }
}

#[test]
fn pyarrow_duckdb_and_spark_read_the_hive_dataset_exactly() {
    let Some(python) = std::env::var_os("CHATETL_TEST_PYTHON") else {
        eprintln!("skipped: CHATETL_TEST_PYTHON is not set (scripts/test sets it)");
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/read_back.py");
    let readers = ["pyarrow", "duckdb", "spark"];
    let sets = datasets();
    // Every dataset in one run of the script, so that Spark starts once (10 s a start).
    let o = Command::new(&python)
        .arg(&script)
        .args(["--readers", &readers.join(",")])
        .args(sets.iter().map(|(_, ds)| ds.out.join("messages")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let seen = v.as_array().expect("a list, one entry per dataset");
    assert_eq!(seen.len(), sets.len());
    for ((name, ds), seen) in sets.iter().zip(seen) {
        for reader in readers {
            let got: Vec<Row> = seen[reader]
                .as_array()
                .unwrap_or_else(|| panic!("{reader} missing for {name}"))
                .iter()
                .map(|r| {
                    (
                        r[0].as_str().unwrap().to_string(),
                        r[1].as_str().map(str::to_string),
                        r[2].as_str().unwrap().to_string(),
                        r[3].as_i64().unwrap(),
                        r[4].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            check(reader, name, ds, got);
        }
    }
}
