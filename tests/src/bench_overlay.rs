//! `cargo xtask bench overlay`: container-to-container traffic between two node namespaces
//! through (a) Hivemind's overlay, (b) a kernel VXLAN device + bridge as Flannel and Swarm do
//! it (namespace defaults, and with bridge-netfilter off), (c) the raw underlay, routed, with
//! no encapsulation. TCP throughput (iperf3, 1 and 4 streams) and the rate of 1-byte
//! request/response transactions (client and server pinned to CPU 0), interleaved and
//! repeated; medians and paired ratios (the median of the per-round ratios).
//!
//! Self-contained (its own traffic tool, statistics and report) so it can join the bench
//! binary of `cargo xtask bench` as one module; `overlay-bench` runs it until then.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, ExitCode},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hivemind_agent::net::dataplane::UnderlayXdp;
use hivemind_common::{identity, overlay::OVERHEAD, reason};
use serde_json::json;

use crate::{
    Netns, Process,
    overlay::{Cluster, ClusterOptions, UNDERLAY_IF, UnderlayKind, node_subnet, underlay_ip},
    util::check,
};

const IPERF_PORT: &str = "5201";
const RR_PORT: u16 = 7000;
const UNDERLAY_MTU: u32 = 1500;
const RR_WARM_UP: Duration = Duration::from_millis(300);

/// Command-line options.
#[derive(Clone, Debug)]
pub struct Options {
    pub reps: usize,
    pub iperf_secs: u32,
    pub rr_secs: f64,
    /// Also measure Hivemind with native XDP on the (veth) underlay.
    pub native_xdp: bool,
    pub out: PathBuf,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut options = Self {
            reps: if quick { 1 } else { 5 },
            iperf_secs: if quick { 2 } else { 4 },
            rr_secs: if quick { 1.0 } else { 3.0 },
            native_xdp: !args.iter().any(|a| a == "--no-native-xdp"),
            out: PathBuf::from("target/bench"),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" | "--no-native-xdp" | "overlay" => {}
                "--reps" => {
                    options.reps = it
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n > 0)
                        .ok_or("--reps needs a positive number")?;
                }
                "--out" => options.out = it.next().ok_or("--out needs a directory")?.into(),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(options)
    }
}

const USAGE: &str = "\
usage: overlay-bench [overlay] [--quick] [--reps N] [--no-native-xdp] [--out DIR]
       overlay-bench rr-server --port P
       overlay-bench rr-client --addr IP:P --secs S

Run as root (namespaces, BPF). `cargo xtask bench overlay` builds it and runs it.";

/// Entry point of the `overlay-bench` binary.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("rr-server") => tool(rr_server(&args[1..])),
        Some("rr-client") => tool(rr_client(&args[1..])),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => match Options::parse(&args) {
            Ok(options) => {
                let report = run(&options);
                print!("{}", report.text);
                match report.write(&options.out) {
                    Ok(path) => {
                        println!("\nresults: {}", path.display());
                        ExitCode::SUCCESS
                    }
                    Err(err) => {
                        eprintln!("overlay-bench: cannot write the results: {err}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(message) => {
                eprintln!("overlay-bench: {message}\n\n{USAGE}");
                ExitCode::from(64)
            }
        },
    }
}

fn tool(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Result<&'a str, String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .ok_or_else(|| format!("missing {name}"))
}

/// Answers every byte with one byte, one connection after another.
fn rr_server(args: &[String]) -> Result<(), String> {
    let port: u16 = flag(args, "--port")?
        .parse()
        .map_err(|e| format!("--port: {e}"))?;
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind: {e}"))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let mut byte = [0u8; 1];
        while matches!(stream.read(&mut byte), Ok(1)) {
            if stream.write_all(&byte).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// One connection, one byte each way at a time, for `--secs` after a warm-up; prints
/// transactions per second.
fn rr_client(args: &[String]) -> Result<(), String> {
    let addr: SocketAddr = flag(args, "--addr")?
        .parse()
        .map_err(|e| format!("--addr: {e}"))?;
    let secs: f64 = flag(args, "--secs")?
        .parse()
        .map_err(|e| format!("--secs: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => break stream,
            Err(err) if Instant::now() >= deadline => return Err(format!("connect {addr}: {err}")),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let mut byte = [1u8; 1];
    let mut transact = |stream: &mut TcpStream| -> Result<(), String> {
        stream.write_all(&byte).map_err(|e| format!("write: {e}"))?;
        stream
            .read_exact(&mut byte)
            .map_err(|e| format!("read: {e}"))
    };
    let warm = Instant::now();
    while warm.elapsed() < RR_WARM_UP {
        transact(&mut stream)?;
    }
    let duration = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut count: u32 = 0;
    while start.elapsed() < duration {
        for _ in 0..64 {
            transact(&mut stream)?;
        }
        count += 64;
    }
    println!("{:.1}", f64::from(count) / start.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The paths.

/// A client and a server container on two nodes, joined one way or another.
trait Path {
    fn client(&self) -> &Netns;
    fn server(&self) -> &Netns;
    fn server_ip(&self) -> Ipv4Addr;
    /// What the path's own machinery dropped that it should not have.
    fn drops(&self) -> Vec<String> {
        Vec::new()
    }
}

struct Hivemind(Cluster);

impl Path for Hivemind {
    fn drops(&self) -> Vec<String> {
        let mut out = Vec::new();
        for node in &self.0.nodes {
            for why in [
                reason::DROPPED_MALFORMED,
                reason::DROPPED_INTERNAL,
                reason::DROPPED_TOO_BIG,
                reason::DROPPED_NO_ROUTE,
                reason::DROPPED_NOT_MEMBER,
            ] {
                let n = node.count(why);
                if n > 0 {
                    out.push(format!("node {}: {} {n}", node.index, reason::label(why)));
                }
            }
        }
        out
    }

    fn client(&self) -> &Netns {
        &self.0.nodes[0].containers[0].netns
    }
    fn server(&self) -> &Netns {
        &self.0.nodes[1].containers[0].netns
    }
    fn server_ip(&self) -> Ipv4Addr {
        self.0.nodes[1].containers[0].ip
    }
}

fn hivemind(xdp: UnderlayXdp) -> Hivemind {
    let mut cluster = Cluster::new(ClusterOptions {
        nodes: 2,
        underlay: UnderlayKind::Direct,
        mtu: UNDERLAY_MTU,
        xdp,
        vxlan_port: 0,
    });
    let mtu = cluster.container_mtu();
    cluster.nodes[0].add_container("client", identity::FIRST_APP + 1, mtu);
    cluster.nodes[1].add_container("server", identity::FIRST_APP + 2, mtu);
    cluster.sync_endpoints();
    Hivemind(cluster)
}

/// Two node namespaces on one veth pair (`ul0`, 192.168.100.11/.12), each with one container
/// namespace; what is between node and container is up to the variant. Field order is drop
/// order.
struct Plain {
    containers: [Netns; 2],
    nodes: [Netns; 2],
}

impl Path for Plain {
    fn client(&self) -> &Netns {
        &self.containers[0]
    }
    fn server(&self) -> &Netns {
        &self.containers[1]
    }
    fn server_ip(&self) -> Ipv4Addr {
        container_ip(1)
    }
}

fn container_ip(i: usize) -> Ipv4Addr {
    let net = node_subnet(i).network().octets();
    Ipv4Addr::new(net[0], net[1], net[2], 2)
}

fn gateway_ip(i: usize) -> Ipv4Addr {
    let net = node_subnet(i).network().octets();
    Ipv4Addr::new(net[0], net[1], net[2], 1)
}

fn plain_nodes(prefix: &str) -> Plain {
    let nodes = [
        Netns::new(&format!("{prefix}n")),
        Netns::new(&format!("{prefix}n")),
    ];
    let containers = [
        Netns::new(&format!("{prefix}c")),
        Netns::new(&format!("{prefix}c")),
    ];
    let mtu = UNDERLAY_MTU.to_string();
    check(Command::new("ip").args([
        "link",
        "add",
        UNDERLAY_IF,
        "netns",
        nodes[0].name(),
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        UNDERLAY_IF,
        "netns",
        nodes[1].name(),
        "mtu",
        &mtu,
    ]));
    for (i, node) in nodes.iter().enumerate() {
        node.ip(&[
            "addr",
            "add",
            &format!("{}/24", underlay_ip(i)),
            "dev",
            UNDERLAY_IF,
        ]);
        node.ip(&["link", "set", UNDERLAY_IF, "up"]);
        node.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    }
    Plain { containers, nodes }
}

/// A container's `eth0`, the host end `host` in the node namespace.
fn container_veth(plain: &Plain, i: usize, host: &str, mtu: u32) {
    let (node, container) = (&plain.nodes[i], &plain.containers[i]);
    check(Command::new("ip").args([
        "link",
        "add",
        "eth0",
        "netns",
        container.name(),
        "mtu",
        &mtu.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        host,
        "netns",
        node.name(),
        "mtu",
        &mtu.to_string(),
    ]));
    container.ip(&[
        "addr",
        "add",
        &format!("{}/24", container_ip(i)),
        "dev",
        "eth0",
    ]);
    container.ip(&["link", "set", "eth0", "up"]);
    container.ip(&["route", "add", "default", "via", &gateway_ip(i).to_string()]);
}

/// (c): routed, no encapsulation: each node routes the other's container subnet to the other
/// node's underlay address. The ceiling for any overlay.
fn routed() -> Plain {
    let plain = plain_nodes("hmbr");
    for i in 0..2 {
        container_veth(&plain, i, "c0", UNDERLAY_MTU);
        let node = &plain.nodes[i];
        node.ip(&["addr", "add", &format!("{}/24", gateway_ip(i)), "dev", "c0"]);
        node.ip(&["link", "set", "c0", "up"]);
        node.ip(&[
            "route",
            "add",
            &node_subnet(1 - i).to_string(),
            "via",
            &underlay_ip(1 - i).to_string(),
        ]);
    }
    plain
}

/// What bridge-netfilter says in a node namespace ("1", "0", or "absent" without the module).
fn bridge_nf(node: &Netns) -> String {
    let out = node.run(
        "sh",
        &["-c", "cat /proc/sys/net/bridge/bridge-nf-call-iptables"],
    );
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        "absent".to_owned()
    }
}

/// (b): Flannel's VXLAN backend: containers on a bridge `cni0` (the gateway), `flannel.1` a
/// VXLAN device (VNI 1, port 4789, no learning) with the other node's VTEP as a permanent
/// neighbour and FDB entry, its subnet routed through it onlink. MTU 1450 in the containers.
/// `bridge_nf_off`: bridge-netfilter off in the node namespaces (its default, on, otherwise).
fn flannel(bridge_nf_off: bool) -> Plain {
    let plain = plain_nodes(if bridge_nf_off { "hmbf" } else { "hmbv" });
    let mtu = UNDERLAY_MTU - OVERHEAD;
    let vtep_mac = |i: usize| format!("0a:00:00:00:00:{:02x}", i + 1);
    for i in 0..2 {
        let node = &plain.nodes[i];
        let j = 1 - i;
        node.ip(&["link", "add", "cni0", "type", "bridge"]);
        node.ip(&[
            "addr",
            "add",
            &format!("{}/24", gateway_ip(i)),
            "dev",
            "cni0",
        ]);
        node.ip(&["link", "set", "cni0", "mtu", &mtu.to_string(), "up"]);
        container_veth(&plain, i, "veth0", mtu);
        node.ip(&["link", "set", "veth0", "master", "cni0", "up"]);
        node.ip(&[
            "link",
            "add",
            "flannel.1",
            "address",
            &vtep_mac(i),
            "mtu",
            &mtu.to_string(),
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &underlay_ip(i).to_string(),
            "dev",
            UNDERLAY_IF,
            "dstport",
            "4789",
            "nolearning",
        ]);
        let peer_vtep = node_subnet(j).network().to_string();
        node.ip(&[
            "addr",
            "add",
            &format!("{}/32", node_subnet(i).network()),
            "dev",
            "flannel.1",
        ]);
        node.ip(&["link", "set", "flannel.1", "up"]);
        node.ip(&[
            "route",
            "add",
            &node_subnet(j).to_string(),
            "via",
            &peer_vtep,
            "dev",
            "flannel.1",
            "onlink",
        ]);
        node.ip(&[
            "neigh",
            "replace",
            &peer_vtep,
            "lladdr",
            &vtep_mac(j),
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]);
        check(Command::new("bridge").args([
            "-n",
            node.name(),
            "fdb",
            "append",
            &vtep_mac(j),
            "dev",
            "flannel.1",
            "dst",
            &underlay_ip(j).to_string(),
        ]));
        if bridge_nf_off && bridge_nf(node) != "absent" {
            node.sh("echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables");
        }
    }
    plain
}

// ---------------------------------------------------------------------------------------------
// Measuring.

/// A path with its servers running; the servers stop before the namespaces go.
struct Running {
    _iperf: Process,
    _rr: Process,
    path: Box<dyn Path>,
    _logs: tempfile::TempDir,
}

impl Running {
    fn new(path: Box<dyn Path>) -> Self {
        let logs = tempfile::tempdir().expect("log dir");
        let mut command = path.server().command("iperf3");
        command.args(["-s", "-p", IPERF_PORT]);
        let iperf = Process::spawn("iperf3 -s", &mut command, &logs.path().join("iperf3.log"));
        let mut command = pinned(path.server());
        command.args(["rr-server", "--port", &RR_PORT.to_string()]);
        let rr = Process::spawn("rr-server", &mut command, &logs.path().join("rr.log"));
        Self {
            _iperf: iperf,
            _rr: rr,
            path,
            _logs: logs,
        }
    }

    /// Gbit/s the server received over `streams` streams.
    fn iperf(&self, streams: u32, secs: u32) -> f64 {
        let ip = self.path.server_ip().to_string();
        let mut last = String::new();
        for _ in 0..5 {
            let out = self.path.client().run(
                "iperf3",
                &[
                    "-c",
                    &ip,
                    "-p",
                    IPERF_PORT,
                    "-t",
                    &secs.to_string(),
                    "-O",
                    "1",
                    "-P",
                    &streams.to_string(),
                    "-J",
                    "--connect-timeout",
                    "2000",
                ],
            );
            if out.status.success()
                && let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                && let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64()
            {
                return bps / 1e9;
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("iperf3 to {ip} failed:\n{last}");
    }

    /// Transactions per second, client and server on CPU 0.
    fn rr(&self, secs: f64) -> f64 {
        let addr = format!("{}:{RR_PORT}", self.path.server_ip());
        let out = check(pinned(self.path.client()).args([
            "rr-client",
            "--addr",
            &addr,
            "--secs",
            &secs.to_string(),
        ]));
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("rr-client said {out:?}"))
    }
}

/// This binary inside `netns`, pinned to CPU 0.
fn pinned(netns: &Netns) -> Command {
    let mut command = netns.command("taskset");
    command
        .args(["-c", "0"])
        .arg(std::env::current_exe().expect("the bench binary's path"));
    command
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

struct Metric {
    name: &'static str,
    unit: &'static str,
    better: Better,
}

const METRICS: [Metric; 4] = [
    Metric {
        name: "TCP, 1 stream",
        unit: "Gbit/s",
        better: Better::Higher,
    },
    Metric {
        name: "TCP, 4 streams",
        unit: "Gbit/s",
        better: Better::Higher,
    },
    Metric {
        name: "1-byte RR, pinned",
        unit: "trans/s",
        better: Better::Higher,
    },
    Metric {
        name: "1-byte RR latency",
        unit: "µs",
        better: Better::Lower,
    },
];

fn median(values: &[f64]) -> f64 {
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

/// Median of the per-round ratios `ours[i] / base[i]`.
fn paired_ratio(ours: &[f64], base: &[f64]) -> f64 {
    let ratios: Vec<f64> = ours.iter().zip(base).map(|(a, b)| a / b).collect();
    median(&ratios)
}

/// What the run produced: the text shown and the JSON written.
#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub json: serde_json::Value,
}

impl Report {
    fn write(&self, dir: &std::path::Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let path = dir.join(format!("overlay-{stamp}.json"));
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&self.json).unwrap_or_default(),
        )?;
        Ok(path)
    }
}

struct Variant {
    label: &'static str,
    key: &'static str,
    running: Running,
    /// Samples per metric (the latency row is derived from the RR row).
    samples: [Vec<f64>; 3],
}

/// Runs the whole comparison.
#[allow(clippy::too_many_lines)] // set-up, rounds, report: one story
pub fn run(options: &Options) -> Report {
    eprintln!("overlay bench: setting up the paths");
    let probe = Netns::new("hmbp");
    let default_bridge_nf = {
        probe.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge_nf(&probe)
    };
    drop(probe);
    let mut variants: Vec<Variant> = Vec::new();
    let mut add = |label, key, path: Box<dyn Path>| {
        variants.push(Variant {
            label,
            key,
            running: Running::new(path),
            samples: [Vec::new(), Vec::new(), Vec::new()],
        });
    };
    add(
        "(a) Hivemind overlay",
        "hivemind",
        Box::new(hivemind(UnderlayXdp::Auto)),
    );
    add(
        "(b) kernel VXLAN + bridge",
        "vxlan_bridge",
        Box::new(flannel(false)),
    );
    add(
        "(b') same, bridge-nf off",
        "vxlan_bridge_nf_off",
        Box::new(flannel(true)),
    );
    add("(c) routed underlay", "routed", Box::new(routed()));
    if options.native_xdp {
        add(
            "(a') Hivemind, native XDP on veth",
            "hivemind_native_xdp",
            Box::new(hivemind(UnderlayXdp::Native)),
        );
    }
    // Every path works before anything is measured.
    for v in &variants {
        let ping = v.running.path.client().run(
            "ping",
            &[
                "-c",
                "1",
                "-W",
                "2",
                &v.running.path.server_ip().to_string(),
            ],
        );
        assert!(ping.status.success(), "{}: no connectivity", v.label);
    }

    let count = variants.len();
    for round in 0..options.reps {
        for k in 0..count {
            // Round r starts with variant r: every variant is measured in every position.
            let v = &mut variants[(round + k) % count];
            eprintln!(
                "overlay bench: round {}/{}: {}",
                round + 1,
                options.reps,
                v.label
            );
            let one = v.running.iperf(1, options.iperf_secs);
            let four = v.running.iperf(4, options.iperf_secs);
            let rr = v.running.rr(options.rr_secs);
            v.samples[0].push(one);
            v.samples[1].push(four);
            v.samples[2].push(rr);
        }
    }
    // What Hivemind's programs did meanwhile: nothing dropped.
    let drops = variants
        .first()
        .map(|v| v.running.path.drops())
        .unwrap_or_default();

    // Rows: medians; ratios of (a) to each other column, paired by round.
    let values = |v: &Variant, m: usize| -> Vec<f64> {
        if m == 3 {
            v.samples[2].iter().map(|rr| 1e6 / rr).collect()
        } else {
            v.samples[m].clone()
        }
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\noverlay: container ↔ container across two nodes ({} rounds, interleaved)",
        options.reps
    );
    let _ = writeln!(
        text,
        "  iperf3 -t {} -O 1 (unpinned); RR: 1 byte each way, TCP_NODELAY, {} s, client and server on CPU 0; latency = 1 / rate",
        options.iperf_secs, options.rr_secs
    );
    let _ = writeln!(
        text,
        "  underlay: one veth pair, MTU {UNDERLAY_MTU}; container MTU {} on the overlays, {UNDERLAY_MTU} routed; bridge-nf-call-iptables in a new namespace: {default_bridge_nf}",
        UNDERLAY_MTU - OVERHEAD
    );
    let _ = writeln!(text, "\nmedians");
    let width = variants
        .iter()
        .map(|v| v.label.len() + 3)
        .max()
        .unwrap_or(10);
    let _ = write!(text, "  {:<width$}", "");
    for m in &METRICS {
        let _ = write!(text, " {:>18}", format!("{} ({})", m.name, m.unit));
    }
    let _ = writeln!(text);
    let mut json_variants = serde_json::Map::new();
    for v in &variants {
        let _ = write!(text, "  {:<width$}", v.label);
        let mut metrics = serde_json::Map::new();
        for (m, metric) in METRICS.iter().enumerate() {
            let samples = values(v, m);
            let _ = write!(text, " {:>18.2}", median(&samples));
            metrics.insert(
                metric.name.to_owned(),
                json!({ "unit": metric.unit, "median": median(&samples), "samples": samples }),
            );
        }
        let _ = writeln!(text);
        json_variants.insert(
            v.key.to_owned(),
            json!({ "label": v.label, "metrics": metrics }),
        );
    }
    let _ = writeln!(
        text,
        "\npaired ratios, (a) Hivemind ÷ column (per round, median)"
    );
    let _ = write!(text, "  {:<width$}", "");
    for m in &METRICS {
        let _ = write!(text, " {:>18}", m.name);
    }
    let _ = writeln!(text);
    let mut json_ratios = serde_json::Map::new();
    for v in variants.iter().skip(1) {
        let _ = write!(text, "  {:<width$}", format!("vs {}", v.label));
        let mut ratios = serde_json::Map::new();
        for (m, metric) in METRICS.iter().enumerate() {
            let r = paired_ratio(&values(&variants[0], m), &values(v, m));
            let _ = write!(text, " {r:>17.2}x");
            ratios.insert(metric.name.to_owned(), json!(r));
        }
        let _ = writeln!(text);
        json_ratios.insert(v.key.to_owned(), serde_json::Value::Object(ratios));
    }

    // Targets: throughput ≥ 1.0x (b), latency ≤ 1.0x (b), everything ≥ 0.85x (c) (latency:
    // ≤ 1/0.85x).
    let ratio = |key: &str, m: usize| {
        let base = variants.iter().find(|v| v.key == key).expect("variant");
        paired_ratio(&values(&variants[0], m), &values(base, m))
    };
    let mut targets = Vec::new();
    for (m, metric) in METRICS.iter().enumerate() {
        let (vs_b, vs_c) = (ratio("vxlan_bridge", m), ratio("routed", m));
        let (b_ok, c_ok) = match metric.better {
            Better::Higher => (vs_b >= 1.0, vs_c >= 0.85),
            Better::Lower => (vs_b <= 1.0, vs_c <= 1.0 / 0.85),
        };
        targets.push(json!({ "metric": metric.name, "vs_b": vs_b, "vs_b_met": b_ok, "vs_c": vs_c, "vs_c_met": c_ok }));
        let sign = if metric.better == Better::Higher {
            "≥"
        } else {
            "≤"
        };
        let _ = writeln!(
            text,
            "  target {:<18} vs (b) {:.2}x {sign} 1.0: {:<4}  vs (c) {:.2}x {sign} {}: {}",
            metric.name,
            vs_b,
            if b_ok { "met" } else { "MISSED" },
            vs_c,
            if metric.better == Better::Higher {
                "0.85"
            } else {
                "1.18"
            },
            if c_ok { "met" } else { "MISSED" },
        );
    }

    // An ASCII chart of the medians, each metric scaled to its best.
    let _ = writeln!(text, "\nchart (medians; bar = share of the best path)");
    for (m, metric) in METRICS.iter().enumerate().take(3) {
        let medians: Vec<f64> = variants.iter().map(|v| median(&values(v, m))).collect();
        let best = medians.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(text, "  {} ({})", metric.name, metric.unit);
        for (v, value) in variants.iter().zip(&medians) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0..=40
            let bar = ((value / best) * 40.0).round() as usize;
            let _ = writeln!(
                text,
                "    {:<width$} {:<40} {value:.1}",
                v.label,
                "█".repeat(bar)
            );
        }
    }
    if drops.is_empty() {
        let _ = writeln!(
            text,
            "\nHivemind's programs dropped nothing during the run."
        );
    } else {
        let _ = writeln!(text, "\nHivemind's programs dropped: {}", drops.join(", "));
    }
    let json = json!({
        "bench": "overlay",
        "reps": options.reps,
        "iperf_secs": options.iperf_secs,
        "rr_secs": options.rr_secs,
        "bridge_nf_default": default_bridge_nf,
        "variants": json_variants,
        "ratios_vs": json_ratios,
        "targets": targets,
        "hivemind_drops": drops,
    });
    Report { text, json }
}
