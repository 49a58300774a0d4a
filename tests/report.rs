//! `report`: the HTML page is self-contained, escapes what the data says, and renders in headless
//! Chromium (Debian's `chromium` and `chromedriver`, driven by Selenium through
//! `tests/interop/render_report.py`) with the expected names and numbers.
//!
//! The browser part runs when `CHATETL_TEST_PYTHON` is set and Chromium is installed; `.ci/run`
//! installs it and sets `CHATETL_REQUIRE_BROWSER=1`, which turns a missing browser into a failure.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn chatetl(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chatetl"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CHATETL_") {
            c.env_remove(k);
        }
    }
    let o = c
        .args([
            "--input-root",
            "in",
            "--output-root",
            "out",
            "--tz",
            "Asia/Seoul",
        ])
        .args(args)
        .current_dir(dir)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A day with a hostile sender name, Hangul and emoji names, in two rooms.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let senders = [
        ("하늘", "lobby", 5),
        ("<img src=x onerror=alert(1)>", "lobby", 4),
        ("루나 😀", "dev", 3),
        ("007", "dev", 2),
    ];
    let mut lines = String::new();
    let mut n = 0;
    for (s, room, count) in senders {
        for k in 0..count {
            n += 1;
            let rec = serde_json::json!({
                "user": s, "room": room, "message": format!("안녕하세요 회의 {k}"),
                "time": format!("2024-10-24 {:02}:15:00", 9 + k), "offset": n,
            });
            lines.push_str(&rec.to_string());
            lines.push('\n');
        }
    }
    let input = dir.path().join("in/chat");
    fs::create_dir_all(&input).unwrap();
    fs::write(input.join("chat_2024-10-24.jsonl"), lines).unwrap();
    dir
}

#[test]
fn report_is_self_contained_and_escaped() {
    let dir = workspace();
    let w = dir.path();
    chatetl(w, &["run", "--date", "2024-10-24"]);
    let o = chatetl(w, &["--json", "report", "--date", "2024-10-24"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let file = PathBuf::from(v["file"].as_str().unwrap());
    let file = if file.is_absolute() {
        file
    } else {
        w.join(file)
    };
    assert!(file.ends_with("out/reports/report_2024-10-24.html"));
    let html = fs::read_to_string(&file).unwrap();
    assert!(!html.contains("<script"), "no scripts");
    assert!(!html.contains("<img"), "the hostile name is escaped");
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(
        !html.contains("src=\"") && !html.contains("href="),
        "no external resources"
    );
    let without_xmlns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!without_xmlns.contains("http"), "no URLs");
    assert!(html.contains("하늘") && html.contains("루나 😀"));
    // clean-output removes the date's report with the rest of its output.
    chatetl(w, &["clean-output", "--date", "2024-10-24"]);
    assert!(!file.exists());
}

fn browser_available() -> bool {
    Path::new(
        &std::env::var("CHATETL_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    )
    .exists()
}

#[test]
fn report_renders_in_chromium_with_the_expected_content() {
    let Some(python) = std::env::var_os("CHATETL_TEST_PYTHON") else {
        eprintln!("skipped: CHATETL_TEST_PYTHON is not set (scripts/test sets it)");
        return;
    };
    if !browser_available() {
        assert!(
            std::env::var_os("CHATETL_REQUIRE_BROWSER").is_none(),
            "Chromium is required (CHATETL_REQUIRE_BROWSER) but not installed"
        );
        eprintln!("skipped: Chromium is not installed (apt-get install chromium chromium-driver)");
        return;
    }
    let dir = workspace();
    let w = dir.path();
    chatetl(w, &["run", "--date", "2024-10-24"]);
    chatetl(w, &["aggregate", "--date", "2024-10-24"]);
    chatetl(w, &["report", "--date", "2024-10-24"]);
    let summary: Value = serde_json::from_slice(
        &fs::read(w.join("out/aggregates/date=2024-10-24/summary.json")).unwrap(),
    )
    .unwrap();
    let page = w.join("out/reports/report_2024-10-24.html");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/render_report.py");
    let o = Command::new(python)
        .arg(script)
        .arg(&page)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = r["text"].as_str().unwrap();
    assert!(
        text.contains("14 messages from 4 senders in 2 rooms"),
        "{text}"
    );
    // Every top sender is shown with its counts, in the table rows the browser laid out.
    for s in summary["top_senders"].as_array().unwrap() {
        let row = format!(
            "{} {} {} {}",
            s["sender_id"].as_str().unwrap(),
            s["messages"],
            s["characters"],
            s["rooms"]
        );
        assert!(text.contains(&row), "missing row {row:?} in {text}");
    }
    assert!(
        text.contains("<img src=x onerror=alert(1)>"),
        "shown as text"
    );
    assert!(text.contains("lobby 9 2 09:00"), "{text}");
    assert_eq!(r["bars"]["top-senders"], 4);
    assert_eq!(r["bars"]["hourly"], 24);
    assert_eq!(r["bars"]["rooms"], 2);
    assert_eq!(
        r["requests"],
        serde_json::json!([]),
        "the page fetched nothing"
    );
    assert!(r["svg_width"].as_f64().unwrap() > 100.0);
}
