//! `report`: one self-contained HTML page of a date's (or a range's) aggregates.
//!
//! No scripts, fonts, images or network: the charts are inline SVG, the text uses the system's
//! fonts (Hangul renders with whatever CJK font the viewer has). Every name from the data is
//! HTML-escaped, so a sender called `<script>` is shown, never run.

use std::fmt::Write as _;
use std::time::Instant;

use serde_json::json;

use crate::config::Settings;
use crate::error::Result;
use crate::exit::ExitCode;
use crate::layout::{Layout, fsync_path};
use crate::stage::Outcome;
use crate::stage::aggregate::{self, AggregateOptions, Aggregates};

/// Runs `report` for a date or a range: `out/reports/report_D.html` or `report_D1_D2.html`.
pub fn run(settings: &Settings, opts: &AggregateOptions) -> Result<Outcome> {
    crate::stage::clean_output::check_output_root(settings)?;
    let started = Instant::now();
    let layout = Layout::new(&settings.output_root);
    let (dates, missing) = aggregate::complete_dates(&layout, opts.from, opts.to)?;
    let agg = aggregate::compute(settings, &layout, &dates, missing, opts.include_system)?;
    let span = if opts.from == opts.to {
        opts.from.to_string()
    } else {
        format!("{}_{}", opts.from, opts.to)
    };
    let dir = layout.root().join("reports");
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::cant_create(&dir, e))?;
    let path = dir.join(format!("report_{span}.html"));
    let html = render(&agg, opts.top);
    // Written beside and renamed over, so a browser never opens half a page.
    let tmp = dir.join(format!(".report_{span}.html.tmp"));
    crate::stage::extract::write_synced(&tmp, html.as_bytes())?;
    std::fs::rename(&tmp, &path).map_err(|e| crate::Error::io("cannot commit", &path, e))?;
    fsync_path(&dir).map_err(|e| crate::Error::io("cannot sync", &dir, e))?;
    Ok(Outcome {
        exit: ExitCode::Ok,
        human: format!(
            "report of {} ({} messages) written to {}\n",
            span.replace('_', ".."),
            agg.messages,
            path.display()
        ),
        json: json!({
            "stage": "report",
            "status": "ok",
            "exit_code": 0,
            "file": path.display().to_string(),
            "bytes": html.len(),
            "dates": agg.dates,
            "missing_dates": agg.missing_dates,
            "duration_s": started.elapsed().as_secs_f64(),
        }),
    })
}

/// HTML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A horizontal bar chart: one labelled bar per (label, value).
fn hbar_chart(id: &str, title: &str, rows: &[(String, u64)]) -> String {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let (label_w, bar_w, row_h) = (180.0, 420.0, 24.0);
    let h = row_h * rows.len() as f64 + 10.0;
    let mut s = format!(
        r#"<svg id="{id}" role="img" aria-label="{}" width="{}" height="{h}" viewBox="0 0 {} {h}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(title),
        label_w + bar_w + 70.0,
        label_w + bar_w + 70.0
    );
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = i as f64 * row_h + 5.0;
        let w = bar_w * (*v as f64) / (max as f64);
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end" class="label">{}</text><rect x="{label_w}" y="{y}" width="{w:.1}" height="{}" class="bar"><title>{}: {v}</title></rect><text x="{}" y="{}" class="value">{v}</text>"#,
            label_w - 8.0,
            y + 15.0,
            esc(label),
            row_h - 6.0,
            esc(label),
            label_w + w + 6.0,
            y + 15.0,
        );
    }
    s.push_str("</svg>");
    s
}

/// A column chart of the 24 hours of the day.
fn hourly_chart(hourly: &[u64; 24]) -> String {
    let max = hourly.iter().copied().max().unwrap_or(0).max(1);
    let (col_w, chart_h, top, bottom) = (26.0, 160.0, 20.0, 24.0);
    let width = col_w * 24.0 + 20.0;
    let height = chart_h + top + bottom;
    let mut s = format!(
        r#"<svg id="hourly" role="img" aria-label="Messages per hour" width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">"#
    );
    for (hour, &n) in hourly.iter().enumerate() {
        let x = 10.0 + hour as f64 * col_w;
        let h = chart_h * (n as f64) / (max as f64);
        let y = top + chart_h - h;
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" class="bar"><title>{hour:02}:00 {n}</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" class="tick">{hour}</text>"#,
            x + 2.0,
            col_w - 4.0,
            x + col_w / 2.0,
            top + chart_h + 16.0,
        );
        if n > 0 {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="value">{n}</text>"#,
                x + col_w / 2.0,
                (y - 4.0).max(12.0),
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// The whole page.
pub fn render(agg: &Aggregates, top: usize) -> String {
    let span = match (agg.dates.first(), agg.dates.last()) {
        (Some(a), Some(b)) if a != b => format!("{a} – {b}"),
        (Some(a), _) => a.to_string(),
        _ => String::new(),
    };
    let name = |s: &Option<String>| s.clone().unwrap_or_else(|| "(unknown)".into());
    let senders: Vec<(String, u64)> = agg
        .senders
        .iter()
        .take(top)
        .map(|s| (name(&s.sender_id), s.messages))
        .collect();
    let rooms: Vec<(String, u64)> = agg
        .rooms
        .iter()
        .take(top)
        .map(|r| (r.room.clone(), r.messages))
        .collect();
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="ko"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>chatetl report {span}</title>
<style>
body {{ font-family: system-ui, "Noto Sans CJK KR", "Malgun Gothic", "Apple SD Gothic Neo", sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 2em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.bar {{ fill: #3b7dd8; }} .label, .value, .tick {{ font-size: 12px; fill: #222; }}
.muted {{ color: #777; }}
</style></head><body>
<h1>Chat activity {span}</h1>
<p id="totals"><span id="messages">{}</span> messages from <span id="sender-count">{}</span> senders in <span id="room-count">{}</span> rooms. Times in {}.{}</p>
"#,
        agg.messages,
        agg.senders.len(),
        agg.rooms.len(),
        esc(&agg.tz),
        if agg.missing_dates.is_empty() {
            String::new()
        } else {
            format!(
                r#" <span class="muted" id="missing">Without complete output: {}.</span>"#,
                agg.missing_dates
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    h.push_str("<h2>Top senders</h2>\n");
    h.push_str(&hbar_chart(
        "top-senders",
        "Top senders by messages",
        &senders,
    ));
    h.push_str("\n<table id=\"senders-table\"><tr><th>sender</th><th>messages</th><th>characters</th><th>rooms</th></tr>\n");
    for s in agg.senders.iter().take(top) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&name(&s.sender_id)),
            s.messages,
            s.characters,
            s.rooms
        );
    }
    h.push_str("</table>\n<h2>Activity by hour</h2>\n");
    h.push_str(&hourly_chart(&agg.hourly));
    h.push_str("\n<h2>Rooms</h2>\n");
    h.push_str(&hbar_chart("rooms", "Rooms by messages", &rooms));
    h.push_str("\n<table id=\"rooms-table\"><tr><th>room</th><th>messages</th><th>senders</th><th>busiest hour</th></tr>\n");
    for r in agg.rooms.iter().take(top) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.room),
            r.messages,
            r.senders,
            r.busiest_hour
                .map(|x| format!("{x:02}:00"))
                .unwrap_or_default()
        );
    }
    h.push_str("</table>\n<h2>Most used words</h2>\n<p id=\"words\">");
    let words: Vec<String> = agg
        .words
        .iter()
        .take(top * 3)
        .map(|(w, n)| format!("{} ({n})", esc(w)))
        .collect();
    h.push_str(&words.join(", "));
    let _ = write!(
        h,
        "</p>\n<p class=\"muted\">chatetl {}</p>\n</body></html>\n",
        env!("CARGO_PKG_VERSION")
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(
            esc(r#"<script>"x"&'y'"#),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"
        );
        let svg = hbar_chart("t", "T", &[("<b>하늘</b>".into(), 3)]);
        assert!(svg.contains("&lt;b&gt;하늘&lt;/b&gt;") && !svg.contains("<b>"));
    }

    #[test]
    fn charts_have_a_bar_per_row_and_hour() {
        let svg = hbar_chart("t", "T", &[("a".into(), 3), ("b".into(), 1)]);
        assert_eq!(svg.matches("<rect").count(), 2);
        let mut hours = [0u64; 24];
        hours[9] = 4;
        let svg = hourly_chart(&hours);
        assert_eq!(svg.matches("<rect").count(), 24);
        assert!(svg.contains("09:00 4"));
    }
}
