//! `cargo xtask bench service`: HTTP requests through an app's VIP and through the node's HTTP
//! router (by Host header) against the same requests sent straight to one replica, in one run,
//! alternating rounds so drift on a shared machine hits all alike; then DNS queries/s against
//! the agent's DNS server with `dnsperf`. wrk runs in the node's namespace inside a cgroup
//! below the one the VIP programs are attached to (where containers run), so its connects are
//! balanced exactly as a container's are. busybox httpd closes every connection, so each
//! request is a new connect: the case where socket-level balancing does its work on every
//! request, and where the router opens a new connection to the replica for every request.
//! Numbers are reported, never asserted.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    SingleNode,
    bench_api::{LoadResult, parse_wrk},
    util::{self, unique, wait_for},
};

const ROUNDS: usize = 5;
const SECONDS: u32 = 5;
const CONNECTIONS: u32 = 8;
/// Paced (a pause after each pair) so busybox httpd's short accept backlog never overflows:
/// a dropped SYN would show up as a 1 s retransmit, not as the program's cost.
const CONNECTS: usize = 500;

/// A cgroup (v2) below the node's container cgroup, removed on drop.
struct ClientCgroup(PathBuf);

impl ClientCgroup {
    fn new(node: &SingleNode) -> Self {
        let unified = PathBuf::from("/sys/fs/cgroup/unified");
        let root = if unified.join("cgroup.procs").exists() {
            unified
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        let dir = root
            .join("hivemind")
            .join(node.agent.node_name())
            .join(unique("bench-client"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        Self(dir)
    }
}

impl Drop for ClientCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// One wrk run against `http://TARGET/`, with `Host: HOST` when given (the router).
fn wrk(
    node: &SingleNode,
    cgroup: &ClientCgroup,
    target: &str,
    host: Option<&str>,
    seconds: u32,
) -> LoadResult {
    let header = host.map(|h| format!("-H 'Host: {h}' ")).unwrap_or_default();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nsenter --net={} -- wrk -t2 -c{CONNECTIONS} -d{seconds}s --latency {header}http://{target}/",
        cgroup.0.display(),
        node.netns.path()
    );
    parse_wrk(
        &util::check(Command::new("sh").args(["-c", &script])),
        CONNECTIONS,
    )
}

/// `connect()` latencies (µs) to `target`:80 from this process, moved into the client cgroup
/// for the duration, on a thread inside the node's namespace: the socket program's own cost,
/// without the HTTP server's.
fn connect_latencies(
    node: &SingleNode,
    cgroup: &ClientCgroup,
    targets: &[Ipv4Addr],
    count: usize,
) -> Vec<Vec<f64>> {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_owned();
    let procs = |dir: &std::path::Path| dir.join("cgroup.procs");
    let root = cgroup
        .0
        .ancestors()
        .find(|d| {
            d.join("cgroup.controllers").exists()
                && !d.join("..").join("cgroup.controllers").exists()
        })
        .map(std::path::Path::to_path_buf)
        .expect("cgroup root");
    let pid = std::process::id().to_string();
    std::fs::write(procs(&cgroup.0), &pid).expect("enter the client cgroup");
    let netns = std::fs::File::open(node.netns.path()).expect("node netns");
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a valid namespace fd; only this thread changes namespace.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                let mut out = vec![Vec::with_capacity(count); targets.len()];
                for _ in 0..count {
                    for (i, target) in targets.iter().enumerate() {
                        let start = Instant::now();
                        let stream = TcpStream::connect((*target, 80)).expect("connect");
                        out[i].push(start.elapsed().as_secs_f64() * 1e6);
                        drop(stream);
                    }
                    std::thread::sleep(Duration::from_millis(3));
                }
                out
            })
            .join()
    });
    let back = root.join(own.trim_start_matches('/'));
    std::fs::write(procs(&back), &pid).expect("leave the client cgroup");
    result.expect("connect thread")
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(0.0)
}

fn deploy(node: &SingleNode, name: &str, replicas: u32) -> (String, Vec<String>) {
    node.agent.cli_ok(&[
        "app",
        "deploy",
        "--image",
        &node.image,
        "--name",
        name,
        "--replicas",
        &replicas.to_string(),
    ]);
    let ips = wait_for(&format!("{name} running"), Duration::from_secs(120), || {
        let list = node.agent.cli_json(&["app", "containers", "--app", name]);
        let ips: Vec<String> = list
            .as_array()?
            .iter()
            .filter(|c| c["state"] == "running")
            .filter_map(|c| Some(c["ip"].as_str()?.to_owned()))
            .filter(|ip| !ip.is_empty())
            .collect();
        (ips.len() == replicas as usize).then_some(ips)
    });
    let apps = node.agent.cli_json(&["app", "ls"]);
    let vip = apps
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == name))
        .and_then(|a| a["vip"].as_str())
        .expect("the app has a VIP")
        .to_owned();
    (vip, ips)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// What `dnsperf` measured: queries/s and the average latency in ms.
#[derive(Clone, Copy, Debug, Default)]
struct DnsResult {
    qps: f64,
    avg_ms: f64,
    lost: u64,
}

fn parse_dnsperf(out: &str) -> DnsResult {
    let mut result = DnsResult::default();
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Queries per second:") {
            result.qps = rest.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("Average Latency (s):") {
            result.avg_ms = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                * 1e3;
        } else if let Some(rest) = line.strip_prefix("Queries lost:") {
            result.lost = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    result
}

/// `dnsperf` from the node's namespace against its DNS server on the gateway address, for
/// `seconds`, asking the names in `queries` (one `NAME TYPE` per line) in turn.
fn dnsperf(node: &SingleNode, server: &str, queries: &std::path::Path, seconds: u32) -> DnsResult {
    let out = node.netns.check(
        "dnsperf",
        &[
            "-s",
            server,
            "-d",
            &queries.display().to_string(),
            "-l",
            &seconds.to_string(),
            "-c",
            "4",
            "-q",
            "64",
        ],
    );
    parse_dnsperf(&out)
}

/// Runs the benchmark and returns a Markdown report.
pub fn bench_service() -> String {
    let node = SingleNode::start();
    let (vip, ips) = deploy(&node, "one", 1);
    let (spread_vip, _) = deploy(&node, "three", 3);
    let cgroup = ClientCgroup::new(&node);
    let direct = ips[0].clone();
    // (name, target, Host header) of each path.
    let paths: [(&str, &str, Option<&str>); 4] = [
        ("direct to the replica", &direct, None),
        ("VIP, 1 replica", &vip, None),
        ("VIP, 3 replicas", &spread_vip, None),
        ("router, 1 replica", "127.0.0.1", Some("one.hivemind")),
    ];
    // Warm-up, and proof that every path answers.
    for (name, target, host) in paths {
        let warm = wrk(&node, &cgroup, target, host, 2);
        assert!(warm.requests > 0 && warm.errors == 0, "{name}: {warm:?}");
    }
    let mut runs: Vec<Vec<LoadResult>> = vec![Vec::new(); paths.len()];
    // Direct, "VIP, 1 replica" and the router hit the same httpd and the same replica:80
    // (TIME_WAIT sockets, exiting children): each of them follows a short 3-replica run, and
    // they take turns going first, so none inherits another's leftovers.
    let single = [0, 1, 3];
    for round in 0..ROUNDS {
        let (_, spread, _) = paths[2];
        runs[2].push(wrk(&node, &cgroup, spread, None, SECONDS));
        for k in 0..single.len() {
            let i = single[(round + k) % single.len()];
            let _ = wrk(&node, &cgroup, spread, None, 1);
            let (_, target, host) = paths[i];
            runs[i].push(wrk(&node, &cgroup, target, host, SECONDS));
        }
    }

    let mut report = String::from("## Service VIP and HTTP router\n\n");
    let _ = writeln!(
        report,
        "wrk -t2 -c{CONNECTIONS} in the node's namespace (in a cgroup below the containers', so the VIP programs balance its connects), {ROUNDS} rounds of {SECONDS} s (direct, VIP-1 and the router take turns going first, each after a short 3-replica run), medians shown; busybox httpd closes each connection, so every request is a new connect through `hm_lb_connect4`, and the router (`Host: one.hivemind` to 127.0.0.1:80, keep-alive from wrk) opens a new connection to the replica for every request.\n"
    );
    report.push_str(
        "| path | requests/s | p50 ms | p99 ms | errors |\n| --- | --- | --- | --- | --- |\n",
    );
    let mut medians = Vec::new();
    for ((name, _, _), results) in paths.iter().zip(&runs) {
        let rps = median(results.iter().map(|r| r.requests_per_sec).collect());
        let p50 = median(results.iter().map(|r| r.p50_ms).collect());
        let p99 = median(results.iter().map(|r| r.p99_ms).collect());
        let errors: u64 = results.iter().map(|r| r.errors).sum();
        let _ = writeln!(
            report,
            "| {name} | {rps:.0} | {p50:.2} | {p99:.2} | {errors} |"
        );
        medians.push((rps, p50, p99));
    }
    let targets: Vec<Ipv4Addr> = [&direct, &vip]
        .iter()
        .map(|t| t.parse().expect("address"))
        .collect();
    let latencies = connect_latencies(&node, &cgroup, &targets, CONNECTS);
    let _ = writeln!(
        report,
        "\n`connect()` alone ({CONNECTS} connects per path, interleaved, from one thread in the node's namespace and the balanced cgroup; µs):\n\n| path | p50 | p99 |\n| --- | --- | --- |"
    );
    for (name, values) in ["direct to the replica", "VIP, 1 replica"]
        .iter()
        .zip(&latencies)
    {
        let _ = writeln!(
            report,
            "| {name} | {:.1} | {:.1} |",
            percentile(values, 0.5),
            percentile(values, 0.99)
        );
    }
    let (direct_rps, direct_p50, direct_p99) = medians[0];
    let (vip_rps, _, vip_p99) = medians[1];
    let (router_rps, router_p50, router_p99) = medians[3];
    let _ = writeln!(
        report,
        "\nVIP / direct (1 replica): requests/s {:.3}, p99 {:.3} (target: within 5%: requests/s ≥ 0.95, p99 ≤ 1.05).",
        vip_rps / direct_rps.max(f64::MIN_POSITIVE),
        vip_p99 / direct_p99.max(f64::MIN_POSITIVE)
    );
    // Per round too: the router's p99 minus direct's in the same round.
    let added: Vec<f64> = runs[3]
        .iter()
        .zip(&runs[0])
        .map(|(router, direct)| router.p99_ms - direct.p99_ms)
        .collect();
    let _ = writeln!(
        report,
        "Router / direct (1 replica): requests/s {:.3}; added p50 {:.2} ms, added p99 {:.2} ms (median of per-round differences {:.2} ms, range {:.2} to {:.2}; target < 2 ms).",
        router_rps / direct_rps.max(f64::MIN_POSITIVE),
        router_p50 - direct_p50,
        router_p99 - direct_p99,
        median(added.clone()),
        added.iter().copied().fold(f64::INFINITY, f64::min),
        added.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );

    report.push_str(&dns(&node));
    report
}

/// DNS: the node's resolver, asked for app names (A records of serving replicas) by `dnsperf`.
fn dns(node: &SingleNode) -> String {
    let mut report = String::new();
    let gateway = node.agent.cli_json(&["health"])["dataplane"]["gateway"]
        .as_str()
        .expect("health shows the gateway")
        .to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let queries = dir.path().join("queries");
    std::fs::write(&queries, "one.hivemind A\nthree.hivemind A\n").expect("query file");
    let _ = dnsperf(node, &gateway, &queries, 1);
    let dns: Vec<DnsResult> = (0..3)
        .map(|_| dnsperf(node, &gateway, &queries, SECONDS))
        .collect();
    let _ = writeln!(
        report,
        "\nDNS (`dnsperf -c 4 -q 64`, {SECONDS} s, 3 runs, from the node's namespace to the agent's server on {gateway}; `one.hivemind` and `three.hivemind` in turn):\n\n| run | queries/s | average latency ms | lost |\n| --- | --- | --- | --- |"
    );
    for (i, run) in dns.iter().enumerate() {
        let _ = writeln!(
            report,
            "| {} | {:.0} | {:.3} | {} |",
            i + 1,
            run.qps,
            run.avg_ms,
            run.lost
        );
    }
    let _ = writeln!(
        report,
        "\nDNS median: {:.0} queries/s.",
        median(dns.iter().map(|r| r.qps).collect())
    );
    report
}
