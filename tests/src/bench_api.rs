//! `cargo xtask bench api`: `GET /api/containers` with 100 containers under concurrent load
//! from a separate process (wrk, inside the agent's namespace), reporting requests/s, latency
//! percentiles and the agent's memory. Numbers are reported, never asserted.

use std::{fmt::Write as _, process::Command, time::Instant};

use serde_json::json;

use crate::{SingleNode, http::Client, util};

/// Containers behind the endpoint under load.
pub const CONTAINERS: usize = 100;
const APPS: usize = 4;

/// One wrk run's results.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub connections: u32,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// Requests completed.
    pub requests: u64,
    /// The agent's CPU time (user + system) per request, in microseconds: what the load costs
    /// the agent whatever else runs on the machine.
    pub cpu_us_per_request: f64,
}

/// Runs the benchmark and returns a Markdown report.
pub fn bench_api() -> String {
    let node = SingleNode::start();
    let api = Client::loopback(&node.netns);
    let pid = node.agent.pid().expect("agent running");
    let rss_idle = rss_kib(pid);

    let started = Instant::now();
    for i in 0..APPS {
        let body = json!({
            "image": node.image,
            "name": format!("bench{i}"),
            "replicas": CONTAINERS / APPS,
            "stop_timeout_secs": 1,
        });
        let reply = api.post_json("/api/deploy", &body.to_string());
        assert_eq!(reply.status, 200, "deploy bench{i}: {}", reply.body);
    }
    let deploy_secs = started.elapsed().as_secs_f64();
    let list = api.get_json("/api/containers");
    let running = list
        .as_array()
        .map_or(0, |l| l.iter().filter(|c| c["state"] == "running").count());
    assert_eq!(running, CONTAINERS, "containers running before the load");
    let body_bytes = api.get("/api/containers").body.len();
    let rss_loaded = rss_kib(pid);

    // `cargo xtask bench api --quick`: a smoke run, numbers too short to quote.
    let quick = std::env::var_os("HIVEMIND_BENCH_QUICK").is_some();
    let (warm_up_secs, run_secs) = if quick { (1, 3) } else { (3, 15) };
    // Warm up, then measure at three concurrency levels.
    let _ = wrk(&node, 8, warm_up_secs);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let runs: Vec<LoadResult> = [8, 16, 64]
        .iter()
        .map(|&c| {
            let before = cpu_ticks(pid);
            let mut result = wrk(&node, c, run_secs);
            let ticks = cpu_ticks(pid).saturating_sub(before);
            result.cpu_us_per_request = per_request_us(ticks, result.requests);
            result
        })
        .collect();
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rss_after = rss_kib(pid);
    let rss_peak = hwm_kib(pid);

    for i in 0..APPS {
        let _ = api.delete(&format!("/api/apps/bench{i}"));
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "## API: `GET /api/containers` with {CONTAINERS} containers\n"
    );
    let _ = writeln!(
        out,
        "wrk (2 threads, {run_secs} s per concurrency, after a {warm_up_secs} s warm-up{}) inside the agent's namespace against the release build on 127.0.0.1:3000; response {body_bytes} bytes of JSON. Deploying the {CONTAINERS} containers ({APPS} apps × {}) took {deploy_secs:.1} s.\n",
        if quick { "; --quick: a smoke run" } else { "" },
        CONTAINERS / APPS
    );
    let _ = writeln!(
        out,
        "| connections | requests/s | p50 | p99 | errors | agent CPU per request |"
    );
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &runs {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.0} µs |",
            r.connections, r.requests_per_sec, r.p50_ms, r.p99_ms, r.errors, r.cpu_us_per_request
        );
    }
    let _ = writeln!(
        out,
        "\nLoad average (1, 5, 15 min) before the runs: {}; after: {} (other work on the machine shows up here).",
        first_three(&load_before),
        first_three(&load_after)
    );
    let _ = writeln!(
        out,
        "\nAgent memory (RSS): {} MiB idle with no containers, {} MiB with {CONTAINERS} containers, {} MiB after the load (peak {} MiB).",
        mib(rss_idle),
        mib(rss_loaded),
        mib(rss_after),
        mib(rss_peak)
    );
    out
}

/// utime + stime of `pid`, in clock ticks (fields 14 and 15 of `/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name, field 14 (utime) is at index 11 and field 15 (stime) at 12.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Microseconds of CPU per request from clock ticks (100 per second on Linux).
#[allow(clippy::cast_precision_loss)] // tick and request counts are far below 2^52
fn per_request_us(ticks: u64, requests: u64) -> f64 {
    if requests == 0 {
        return 0.0;
    }
    ticks as f64 * 10_000.0 / requests as f64
}

fn first_three(loadavg: &str) -> String {
    loadavg
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[allow(clippy::cast_precision_loss)] // a process's KiB count is far below 2^52
fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
}

/// Peak resident memory of `pid` in KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    proc_status(pid, "VmHWM:")
}

/// `wrk -t2 -c CONNECTIONS -d SECONDS --latency` against `GET /api/containers`.
fn wrk(node: &SingleNode, connections: u32, seconds: u32) -> LoadResult {
    let out = util::check(
        Command::new("nsenter")
            .arg(format!("--net={}", node.netns.path()))
            .args(["--", "wrk", "-t2", "--latency"])
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .arg("http://127.0.0.1:3000/api/containers"),
    );
    parse_wrk(&out, connections)
}

/// Reads wrk's `Requests/sec:`, the 50% and 99% lines of `--latency`, and error counts.
pub fn parse_wrk(out: &str, connections: u32) -> LoadResult {
    let mut result = LoadResult {
        connections,
        ..LoadResult::default()
    };
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            result.requests_per_sec = rest.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("50%") {
            result.p50_ms = duration_ms(rest.trim());
        } else if let Some(rest) = line.strip_prefix("99%") {
            result.p99_ms = duration_ms(rest.trim());
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            result.requests = count.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            result.errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    result
}

/// `1.23ms`, `850.00us`, `1.02s` → milliseconds.
fn duration_ms(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().unwrap_or(0.0);
    match unit {
        "us" => n / 1000.0,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 15s test @ http://127.0.0.1:3000/api/containers
  2 threads and 16 connections
  Latency Distribution
     50%    2.50ms
     75%    3.00ms
     90%    4.00ms
     99%  850.00us
  45000 requests in 15.00s, 1.2GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:   3000.12
Transfer/sec:     80.00MB";
        let r = parse_wrk(out, 16);
        assert!((r.requests_per_sec - 3000.12).abs() < 1e-6);
        assert!((r.p50_ms - 2.5).abs() < 1e-9);
        assert!((r.p99_ms - 0.85).abs() < 1e-9);
        assert_eq!(r.errors, 3);
        assert_eq!(r.requests, 45000);
    }
}
