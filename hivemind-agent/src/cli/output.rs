//! Rendering for people (aligned tables) and scripts (JSON).

use std::fmt::Write as _;

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `value` as JSON, or as YAML for `-o yaml`.
pub fn document<T: serde::Serialize>(output: super::Output, value: &T) -> anyhow::Result<()> {
    if output == super::Output::Yaml {
        print!("{}", serde_norway::to_string(value)?);
        Ok(())
    } else {
        json(value)
    }
}

/// A left-aligned text table with an upper-case header row.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_ascii_uppercase()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// "3d 4h", "5m 2s": uptime for people.
pub fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(&["name", "id"]);
        table.row(vec!["a-long-name".into(), "1".into()]);
        assert_eq!(table.render(), "NAME         ID\na-long-name  1\n");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(65), "1m 5s");
        assert_eq!(duration(3 * 3600 + 60), "3h 1m");
        assert_eq!(duration(90_000), "1d 1h");
    }
}

/// `2026-11-27 14:03:09` (UTC) from milliseconds since the epoch.
pub fn timestamp(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}")
}

/// "3m ago" relative to now.
pub fn ago(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let now = crate::model::now_ms();
    format!("{} ago", duration(now.saturating_sub(ms) / 1000))
}

/// `-q`: one name or id per line, for `xargs` and shell loops.
pub fn names<'a>(names: impl Iterator<Item = &'a str>) {
    for name in names {
        println!("{name}");
    }
}

/// Items joined by commas, or `-` for none.
pub fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

/// 1536 → "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)] // display only
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn formats_timestamps_and_sizes() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1_000), "1970-01-01 00:00:01");
        assert_eq!(timestamp(1_795_788_189_000), "2026-11-27 14:03:09");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
    }
}

/// Prints a stream of events one line each — `render`ed for people, one JSON document a line
/// for `-o json` and `-o yaml` (a YAML stream would need separators) — until it ends or the
/// reader goes away (e.g. `| head`).
pub async fn lines<T: serde::Serialize>(
    output: super::Output,
    mut events: tonic::Streaming<T>,
    render: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    use tokio_stream::StreamExt as _;
    let mut stdout = std::io::stdout().lock();
    while let Some(event) = events.next().await {
        let event = event?;
        let line = match output {
            super::Output::Json | super::Output::Yaml => serde_json::to_string(&event)?,
            super::Output::Table => render(&event),
        };
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(())
}
