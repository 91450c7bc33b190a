//! What `ferry` prints for a person: aligned tables and a task's details.
//! (`--json` prints the API's documents instead, see `main.rs`.)

use serde_json::Value;

/// The statuses in their order of a task's life, as `/tasks/counts` names
/// them.
const STATUSES: [&str; 6] = [
    "pending",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "cancelled",
];

/// Rows under a header, columns padded to their widest cell; columns
/// marked in `right` are aligned right (numbers).
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(width(cell));
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            let pad = " ".repeat(widths[i] - width(cell));
            if right.get(i).copied().unwrap_or(false) {
                out.push_str(&pad);
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if i != last {
                    out.push_str(&pad);
                }
            }
            if i != last {
                out.push_str("  ");
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// An RFC 3339 time from the API as `2026-12-03 20:41:07` (UTC, to the
/// second); `-` for null.
pub fn time(value: &Value) -> String {
    match value.as_str() {
        None => "-".into(),
        Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(t) => t
                .with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
            Err(_) => text.into(),
        },
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The rows of a `GET /tasks` page as a table.
pub fn tasks(page: &Value) -> String {
    let rows: Vec<Vec<String>> = page["tasks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| {
            // The latest change the listing knows of.
            let updated = [&t["finished_at"], &t["started_at"], &t["created_at"]]
                .into_iter()
                .find(|v| !v.is_null())
                .unwrap_or(&Value::Null);
            vec![
                text(&t["id"]),
                text(&t["type"]),
                text(&t["status"]),
                text(&t["attempts"]),
                time(&t["created_at"]),
                time(updated),
            ]
        })
        .collect();
    table(
        &["ID", "TYPE", "STATUS", "ATTEMPTS", "CREATED", "UPDATED"],
        &rows,
        &[false, false, false, true, false, false],
    )
}

/// `GET /tasks/counts` as a table: one row per type, a column per status,
/// and the totals.
pub fn counts(counts: &Value) -> String {
    let count = |v: &Value, status: &str| v[status].as_i64().unwrap_or(0);
    let row = |name: &str, v: &Value| {
        let mut row = vec![name.to_string()];
        row.extend(STATUSES.iter().map(|s| count(v, s).to_string()));
        row.push(
            STATUSES
                .iter()
                .map(|s| count(v, s))
                .sum::<i64>()
                .to_string(),
        );
        row
    };
    let mut rows: Vec<Vec<String>> = counts["by_type"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, v)| row(name, v))
        .collect();
    let mut total = row("all types", &counts["by_status"]);
    if let Some(n) = counts["total"].as_i64() {
        total[STATUSES.len() + 1] = n.to_string();
    }
    rows.push(total);
    let mut header = vec!["TYPE"];
    let upper: Vec<String> = STATUSES.iter().map(|s| s.to_uppercase()).collect();
    header.extend(upper.iter().map(String::as_str));
    header.push("TOTAL");
    let mut right = vec![false];
    right.extend([true; STATUSES.len() + 1]);
    table(&header, &rows, &right)
}

/// A task's status view (`GET /status/<id>`) as `key  value` lines, then
/// its result or error and its attempts.
pub fn task(view: &Value) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        ("id", text(&view["id"])),
        ("status", text(&view["status"])),
        ("type", text(&view["type"])),
        ("source", text(&view["source"])),
        ("event id", text(&view["event_id"])),
        (
            "attempts",
            format!(
                "{} of {}",
                text(&view["attempts"]),
                text(&view["max_attempts"])
            ),
        ),
        ("created", time(&view["created_at"])),
        ("started", time(&view["started_at"])),
        ("finished", time(&view["finished_at"])),
    ];
    if !view["due_at"].is_null() {
        lines.push(("due", time(&view["due_at"])));
    }
    if !view["cancel_requested_at"].is_null() {
        lines.push(("cancel asked", time(&view["cancel_requested_at"])));
    }
    if !view["error"].is_null() {
        lines.push(("error", text(&view["error"])));
    }
    if !view["result"].is_null() {
        // On one line when it is short, indented under its key when not.
        let result = match view["result"].to_string() {
            short if short.chars().count() <= 100 => short,
            _ => serde_json::to_string_pretty(&view["result"]).unwrap_or_default(),
        };
        lines.push(("result", result.replace('\n', "\n              ")));
    }
    let mut out = String::new();
    for (key, value) in lines {
        out.push_str(&format!("{key:<12}  {value}\n"));
    }
    let history = view["attempt_history"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !history.is_empty() {
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|a| {
                vec![
                    text(&a["attempt"]),
                    text(&a["worker"]),
                    time(&a["started_at"]),
                    time(&a["finished_at"]),
                    text(&a["error"]),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["ATTEMPT", "WORKER", "STARTED", "FINISHED", "ERROR"],
            &rows,
            &[true, false, false, false, false],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let out = table(
            &["A", "NUMBER", "C"],
            &[
                vec!["long text".into(), "1".into(), "x".into()],
                vec!["b".into(), "12345678".into(), "".into()],
            ],
            &[false, true, false],
        );
        assert_eq!(
            out,
            "A            NUMBER  C\nlong text         1  x\nb          12345678  \n"
        );
    }

    #[test]
    fn times_are_utc_to_the_second() {
        assert_eq!(
            time(&json!("2026-12-03T20:41:07.902114000Z")),
            "2026-12-03 20:41:07"
        );
        assert_eq!(
            time(&json!("2026-12-03T21:41:07+01:00")),
            "2026-12-03 20:41:07"
        );
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn counts_have_a_row_per_type_and_the_totals() {
        let out = counts(&json!({
            "age_ms": 3, "total": 7,
            "by_status": {"cancelled": 0, "failed": 2, "pending": 0, "retrying": 0, "running": 1, "succeeded": 4},
            "by_type": {"org.ferry.echo": {"running": 1, "succeeded": 4}, "org.ferry.fail": {"failed": 2}}
        }));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("TYPE"), "{out}");
        let cells = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            cells(lines[1]),
            ["org.ferry.echo", "0", "1", "0", "4", "0", "0", "5"]
        );
        assert_eq!(
            cells(lines[2]),
            ["org.ferry.fail", "0", "0", "0", "0", "2", "0", "2"]
        );
        assert_eq!(
            cells(lines[3]),
            ["all", "types", "0", "1", "0", "4", "2", "0", "7"]
        );
    }
}
