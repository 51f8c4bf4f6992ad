//! What a bench produces: tables of repeated measurements, side by side with their baselines
//! and the ratios between them, targets with a verdict, and notes. Printed for people and
//! written as JSON for scripts.

use std::{fmt::Write as _, path::Path};

use serde_json::{Value, json};

/// Which way is better for a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    fn as_str(self) -> &'static str {
        match self {
            Self::Higher => "higher",
            Self::Lower => "lower",
        }
    }
}

/// The repetitions of one measurement, in the order they were taken.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> f64 {
        median(&self.0)
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// The per-round ratios `self[i] / base[i]`, when both were taken in the same rounds.
    pub fn paired_ratios(&self, base: &Self) -> Option<Vec<f64>> {
        (self.0.len() == base.0.len() && !self.0.is_empty())
            .then(|| self.0.iter().zip(&base.0).map(|(a, b)| a / b).collect())
    }

    /// Median of the per-round ratios (the paired ratio, which cancels slow drifts of the
    /// machine); the ratio of the medians when the rounds do not pair up.
    pub fn ratio_to(&self, base: &Self) -> f64 {
        self.paired_ratios(base)
            .map_or_else(|| self.median() / base.median(), |r| median(&r))
    }

    /// `1.05x` or, with several paired rounds, `1.05x (0.93-1.12)`: the spread of the
    /// per-round ratios says how much to trust the median.
    fn ratio_text(&self, base: &Self) -> String {
        match self.paired_ratios(base) {
            Some(r) if r.len() > 1 => {
                let s = Samples(r);
                format!("{:.2}x ({:.2}-{:.2})", s.median(), s.min(), s.max())
            }
            _ => format!("{:.2}x", self.ratio_to(base)),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "median": self.median(),
            "min": self.min(),
            "max": self.max(),
            "samples": self.0,
        })
    }
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    }
}

/// One metric measured on every column of its table.
#[derive(Clone, Debug)]
pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    pub better: Better,
    /// One entry per column of the table; empty when that column was not measured.
    pub cells: Vec<Samples>,
}

/// Measurements of the same metrics on several variants: column 0 is ours, the others are
/// baselines; each row shows the ratio of ours to every baseline.
#[derive(Clone, Debug)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    /// Whether to show ours (column 0) against every other column.
    pub ratios: bool,
}

impl Table {
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Self {
        Self {
            title: title.into(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            ratios: true,
        }
    }

    /// A table of independent columns (no ratio columns).
    #[must_use]
    pub fn without_ratios(mut self) -> Self {
        self.ratios = false;
        self
    }

    pub fn row(
        &mut self,
        metric: impl Into<String>,
        unit: &'static str,
        better: Better,
    ) -> &mut Row {
        self.rows.push(Row {
            metric: metric.into(),
            unit,
            better,
            cells: vec![Samples::default(); self.columns.len()],
        });
        let last = self.rows.len() - 1;
        &mut self.rows[last]
    }

    /// The ratio of column 0 to `column` in the row named `metric`.
    pub fn ratio(&self, metric: &str, column: usize) -> Option<f64> {
        let row = self.rows.iter().find(|r| r.metric == metric)?;
        let (ours, base) = (row.cells.first()?, row.cells.get(column)?);
        (!ours.is_empty() && !base.is_empty()).then(|| ours.ratio_to(base))
    }

    /// The per-round ratios of column 0 to `column` in the row named `metric`.
    pub fn paired_ratios(&self, metric: &str, column: usize) -> Option<Vec<f64>> {
        let row = self.rows.iter().find(|r| r.metric == metric)?;
        row.cells.first()?.paired_ratios(row.cells.get(column)?)
    }

    pub fn median(&self, metric: &str, column: usize) -> Option<f64> {
        let row = self.rows.iter().find(|r| r.metric == metric)?;
        row.cells
            .get(column)
            .filter(|s| !s.is_empty())
            .map(Samples::median)
    }

    fn render(&self, out: &mut String) {
        let ratio_columns = if self.ratios { &self.columns[1..] } else { &[] };
        let ratio_headers: Vec<String> = ratio_columns.iter().map(|c| format!("vs {c}")).collect();
        let mut header = vec!["metric".to_owned(), "unit".to_owned()];
        header.extend(self.columns.iter().cloned());
        header.extend(ratio_headers);
        let mut lines = vec![header];
        for row in &self.rows {
            let mut line = vec![row.metric.clone(), row.unit.to_owned()];
            for cell in &row.cells {
                line.push(if cell.is_empty() {
                    "-".to_owned()
                } else {
                    format_value(cell.median())
                });
            }
            let ours = &row.cells[0];
            for base in row.cells.iter().skip(1).take(ratio_columns.len()) {
                line.push(if ours.is_empty() || base.is_empty() {
                    "-".to_owned()
                } else {
                    ours.ratio_text(base)
                });
            }
            lines.push(line);
        }
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let _ = writeln!(out, "\n{}", self.title);
        for (n, line) in lines.iter().enumerate() {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i == 0 {
                    let _ = write!(text, "  {cell:<w$}", w = widths[i]);
                } else {
                    let _ = write!(text, "  {cell:>w$}", w = widths[i]);
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
            if n == 0 {
                let total: usize = widths.iter().map(|w| w + 2).sum();
                let _ = writeln!(out, "  {}", "-".repeat(total.saturating_sub(2)));
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows.iter().map(|row| {
                let ours = &row.cells[0];
                json!({
                    "metric": row.metric,
                    "unit": row.unit,
                    "better": row.better.as_str(),
                    "values": self.columns.iter().zip(&row.cells).map(|(column, cell)| {
                        (column.clone(), if cell.is_empty() { Value::Null } else { cell.to_json() })
                    }).collect::<serde_json::Map<String, Value>>(),
                    "ratios": self.columns[1..].iter().zip(&row.cells[1..]).filter(|_| self.ratios).map(|(column, base)| {
                        let ratio = (!ours.is_empty() && !base.is_empty()).then(|| json!({
                            "median": ours.ratio_to(base),
                            "paired": ours.paired_ratios(base),
                        }));
                        (column.clone(), ratio.unwrap_or(Value::Null))
                    }).collect::<serde_json::Map<String, Value>>(),
                })
            }).collect::<Vec<_>>(),
        })
    }
}

/// Three significant digits, enough for noisy measurements.
fn format_value(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "-".to_owned()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A goal from the issue, and whether this run met it.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    /// What is wanted, e.g. "<= 1.5x ctr run".
    pub want: String,
    /// What this run measured, e.g. "1.21x".
    pub got: String,
    pub met: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub bench: String,
    pub quick: bool,
    /// How the numbers were taken (reps, interleaving, pinning), printed above the tables.
    pub method: Vec<String>,
    pub tables: Vec<Table>,
    pub targets: Vec<Target>,
    /// Observations printed after the tables.
    pub notes: Vec<String>,
    pub elapsed_secs: f64,
    /// `/proc/loadavg` before and after the run: how busy the (shared) machine was.
    pub load: (String, String),
}

impl Report {
    pub fn new(bench: &str, quick: bool) -> Self {
        Self {
            bench: bench.to_owned(),
            quick,
            ..Self::default()
        }
    }

    /// `got` for a ratio target: the paired median, and in how many rounds the ratio alone
    /// would have met `wanted` (by `meets`).
    pub fn ratio_got(rounds: &[f64], meets: impl Fn(f64) -> bool) -> String {
        let met = rounds.iter().filter(|r| meets(**r)).count();
        format!(
            "{:.2}x ({met} of {} rounds meet it)",
            median(rounds),
            rounds.len()
        )
    }

    pub fn target(&mut self, name: &str, want: &str, got: String, met: bool) {
        self.targets.push(Target {
            name: name.to_owned(),
            want: want.to_owned(),
            got,
            met,
        });
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n== bench {}{} ({:.0} s) ==",
            self.bench,
            if self.quick { " --quick" } else { "" },
            self.elapsed_secs
        );
        for line in &self.method {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(
            out,
            "  load average (1, 5, 15 min) before: {}; after: {} — other work on the machine skews wall-clock numbers",
            self.load.0, self.load.1
        );
        for table in &self.tables {
            table.render(&mut out);
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\ntargets");
            for t in &self.targets {
                let _ = writeln!(
                    out,
                    "  [{}] {}: want {}, got {}",
                    if t.met { "met" } else { "MISSED" },
                    t.name,
                    t.want,
                    t.got
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nnotes");
            for note in &self.notes {
                let _ = writeln!(out, "  - {note}");
            }
        }
        out
    }

    pub fn to_json(&self, started_unix: u64) -> Value {
        json!({
            "bench": self.bench,
            "quick": self.quick,
            "started_unix": started_unix,
            "elapsed_secs": self.elapsed_secs,
            "loadavg_before": self.load.0,
            "loadavg_after": self.load.1,
            "host": host(),
            "method": self.method,
            "tables": self.tables.iter().map(Table::to_json).collect::<Vec<_>>(),
            "targets": self.targets.iter().map(|t| json!({
                "name": t.name, "want": t.want, "got": t.got, "met": t.met,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    /// Writes `<dir>/<bench>-<unix time>.json` and a copy as `<dir>/<bench>.json` (the
    /// latest run); returns the first path.
    pub fn write(&self, dir: &Path, started_unix: u64) -> std::io::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir)?;
        let text = serde_json::to_string_pretty(&self.to_json(started_unix))?;
        let path = dir.join(format!("{}-{started_unix}.json", self.bench));
        std::fs::write(&path, &text)?;
        std::fs::write(dir.join(format!("{}.json", self.bench)), &text)?;
        Ok(path)
    }
}

/// The machine, so results from different hosts are not compared by accident.
fn host() -> Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "cpu": cpu,
        "hostname": read("/proc/sys/kernel/hostname"),
    })
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_paired_ratios() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        let ours = Samples(vec![2.0, 4.0, 9.0]);
        let base = Samples(vec![1.0, 4.0, 3.0]);
        // Paired: ratios 2, 1, 3 -> median 2 (the ratio of medians would be 4/3).
        assert!((ours.ratio_to(&base) - 2.0).abs() < 1e-9);
        let unpaired = Samples(vec![2.0]);
        assert!((unpaired.ratio_to(&base) - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn tables_render_ratios_and_json() {
        let mut t = Table::new("t", &["ours", "base"]);
        let row = t.row("rate", "ops/s", Better::Higher);
        row.cells[0] = Samples(vec![10.0, 12.0]);
        row.cells[1] = Samples(vec![5.0, 6.0]);
        let mut out = String::new();
        t.render(&mut out);
        assert!(out.contains("2.00x (2.00-2.00)"), "{out}");
        let json = t.to_json();
        assert_eq!(json["rows"][0]["ratios"]["base"]["median"], 2.0);
        assert_eq!(json["rows"][0]["values"]["ours"]["median"], 11.0);
    }
}
