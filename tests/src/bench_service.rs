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
/// Length of the one-connection (latency) runs.
const LATENCY_SECONDS: u32 = 3;
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

/// One wrk run of `connections` connections against `http://TARGET/`, with `Host: HOST` when
/// given (the router).
fn wrk(
    node: &SingleNode,
    cgroup: &ClientCgroup,
    (target, host): (&str, Option<&str>),
    connections: u32,
    seconds: u32,
) -> LoadResult {
    let header = host.map(|h| format!("-H 'Host: {h}' ")).unwrap_or_default();
    let threads = connections.min(2);
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nsenter --net={} -- wrk -t{threads} -c{connections} -d{seconds}s --latency {header}http://{target}/",
        cgroup.0.display(),
        node.netns.path()
    );
    parse_wrk(
        &util::check(Command::new("sh").args(["-c", &script])),
        connections,
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
    // Every request is a new connection from this namespace to one replica:80: tens of
    // thousands in TIME_WAIT within a minute, and a connect() that searches the ephemeral
    // port range for a free port gets slow (milliseconds) before it fails. Reusing TIME_WAIT
    // ports and the whole range keep that search short for every path alike, so what is
    // measured is the path, not the port search.
    node.netns.check(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65535",
        ],
    );
    let (vip, ips) = deploy(&node, "one", 1);
    let (spread_vip, _) = deploy(&node, "three", 3);
    let cgroup = ClientCgroup::new(&node);
    let direct = ips[0].clone();
    // (name, (target, Host header)) of each path.
    let paths: [(&str, (&str, Option<&str>)); 4] = [
        ("direct to the replica", (&direct, None)),
        ("VIP, 1 replica", (&vip, None)),
        ("VIP, 3 replicas", (&spread_vip, None)),
        ("router, 1 replica", ("127.0.0.1", Some("one.hivemind"))),
    ];
    // Warm-up, and proof that every path answers.
    for (name, path) in paths {
        let warm = wrk(&node, &cgroup, path, CONNECTIONS, 2);
        assert!(warm.requests > 0 && warm.errors == 0, "{name}: {warm:?}");
    }
    // Per path: runs with CONNECTIONS connections (throughput) and with one (latency: the
    // replica is never queued behind other requests, so the router's own cost shows).
    let mut loaded: Vec<Vec<LoadResult>> = vec![Vec::new(); paths.len()];
    let mut single: Vec<Vec<LoadResult>> = vec![Vec::new(); paths.len()];
    // Direct, "VIP, 1 replica" and the router hit the same httpd and the same replica:80
    // (TIME_WAIT sockets, exiting children): each of them follows a short 3-replica run, and
    // they take turns going first, so none inherits another's leftovers.
    let one_replica = [0, 1, 3];
    for round in 0..ROUNDS {
        let spread = paths[2].1;
        loaded[2].push(wrk(&node, &cgroup, spread, CONNECTIONS, SECONDS));
        single[2].push(wrk(&node, &cgroup, spread, 1, LATENCY_SECONDS));
        for k in 0..one_replica.len() {
            let i = one_replica[(round + k) % one_replica.len()];
            let _ = wrk(&node, &cgroup, spread, CONNECTIONS, 1);
            loaded[i].push(wrk(&node, &cgroup, paths[i].1, CONNECTIONS, SECONDS));
            single[i].push(wrk(&node, &cgroup, paths[i].1, 1, LATENCY_SECONDS));
        }
    }

    let mut report = String::from("## Service VIP and HTTP router\n\n");
    let _ = writeln!(
        report,
        "wrk in the node's namespace (in a cgroup below the containers', so the VIP programs balance its connects), {ROUNDS} rounds; per path and round one run of {SECONDS} s with {CONNECTIONS} connections and one of {LATENCY_SECONDS} s with 1; direct, VIP-1 and the router take turns going first, each after a short 3-replica run; medians of rounds. busybox httpd closes each connection, so every request is a new connect through `hm_lb_connect4`, and the router (`Host: one.hivemind` to 127.0.0.1:80, keep-alive from wrk) opens a new connection to the replica for every request. The namespace reuses TIME_WAIT ports (`tcp_tw_reuse=1`, ports 1024-65535) so no path waits on the ephemeral-port search.\n"
    );
    report.push_str(
        "| path | requests/s | p50 ms | p99 ms | errors | 1 connection: requests/s | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let stats = |results: &[LoadResult]| {
        (
            median(results.iter().map(|r| r.requests_per_sec).collect()),
            median(results.iter().map(|r| r.p50_ms).collect()),
            median(results.iter().map(|r| r.p99_ms).collect()),
        )
    };
    for (i, (name, _)) in paths.iter().enumerate() {
        let (rps, p50, p99) = stats(&loaded[i]);
        let (one_rps, one_p50, one_p99) = stats(&single[i]);
        let errors: u64 = loaded[i].iter().chain(&single[i]).map(|r| r.errors).sum();
        let _ = writeln!(
            report,
            "| {name} | {rps:.0} | {p50:.2} | {p99:.2} | {errors} | {one_rps:.0} | {one_p50:.3} | {one_p99:.3} |"
        );
    }
    report.push_str(&connects(&node, &cgroup, [&direct, &vip]));
    let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
    let ((direct_rps, _, direct_p99), (vip_rps, _, vip_p99)) =
        (stats(&loaded[0]), stats(&loaded[1]));
    let _ = writeln!(
        report,
        "\nVIP / direct (1 replica, {CONNECTIONS} connections): requests/s {:.3}, p99 {:.3} (target: within 5%: requests/s ≥ 0.95, p99 ≤ 1.05).",
        ratio(vip_rps, direct_rps),
        ratio(vip_p99, direct_p99)
    );
    // The router's p99 minus direct's, per round, with one connection.
    let added: Vec<f64> = single[3]
        .iter()
        .zip(&single[0])
        .map(|(router, direct)| router.p99_ms - direct.p99_ms)
        .collect();
    let _ = writeln!(
        report,
        "Router − direct (1 replica, 1 connection): added p99 {:.3} ms (median of per-round differences; range {:.3} to {:.3}; target < 2 ms); requests/s with {CONNECTIONS} connections {:.3}x direct.",
        median(added.clone()),
        added.iter().copied().fold(f64::INFINITY, f64::min),
        added.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ratio(stats(&loaded[3]).0, direct_rps),
    );

    report.push_str(&dns(&node));
    report
}

/// The `connect()` table: direct to the replica and to its VIP.
fn connects(node: &SingleNode, cgroup: &ClientCgroup, targets: [&str; 2]) -> String {
    let mut report = String::new();
    let targets: Vec<Ipv4Addr> = targets
        .iter()
        .map(|t| t.parse().expect("address"))
        .collect();
    let latencies = connect_latencies(node, cgroup, &targets, CONNECTS);
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
