//! `datapath`: (a) TCP throughput (iperf3, 1 and 4 streams) and 1-byte request/response rate
//! between two containers on one node through Hivemind's datapath, next to the same pair
//! joined by a Linux bridge (bridge-netfilter as a new namespace has it, and off) and by a bare
//! veth pair; (b) the per-packet cost of policy at 10 to 100 000 rules — Hivemind's program
//! under `BPF_PROG_TEST_RUN`, and Hivemind and iptables-nft under the same UDP flood.

mod policy;
mod topology;

use std::time::Duration;

use hivemind_tests::Process;

use crate::{
    Bench, Options, Report,
    common::{TRAFFIC_NICE, check_interrupted, interleave, ms, self_exe, tool_in, traffic},
    report::{Better, Samples, Table},
};
use policy::{HivemindFlood, IptablesHost, RULE_COUNTS, RuleSet, TestRunProbe};
use topology::{BridgeNet, DirectNet, HivemindNode, Hosts};

pub const BENCH: Bench = Bench {
    name: "datapath",
    about: "container↔container throughput and RR vs a Linux bridge; policy cost vs iptables at 10..100k rules",
    run,
};

const IPERF_PORT: &str = "5201";
const RR_PORT: &str = "7000";
const TCP_1: &str = "TCP, 1 stream";
const TCP_4: &str = "TCP, 4 streams";
const RR: &str = "1-byte request/response, pinned";

fn run(options: &Options) -> Report {
    let mut report = Report::new("datapath", options.quick);
    let reps = options.reps(7, 1);
    let iperf_secs = options.pick(3, 2);
    let rr_secs = options.pick(3.0, 1.0);
    let flood_reps = options.reps(5, 1);
    let flood_secs = options.pick(2.0, 1.0);
    let run_reps = options.reps(11, 3);
    let run_repeat = options.pick(200_000, 50_000);
    report.method = vec![
        format!(
            "throughput: {reps} rounds; in each, every metric runs on every path, the path order rotating per round; ratios are medians of per-round ratios"
        ),
        format!(
            "iperf3 -t {iperf_secs} -O 1 (first second omitted), unpinned; RR: one TCP connection, 1 byte each way, TCP_NODELAY, {rr_secs} s, client and server both pinned to CPU 0 (taskset); every traffic process runs at nice {TRAFFIC_NICE}"
        ),
        format!(
            "policy test-run: hm_to_container under BPF_PROG_TEST_RUN, repeat {run_repeat}, {run_reps} rounds over every rule count, kernel-measured ns/run"
        ),
        format!(
            "policy flood: 64-byte UDP from one thread pinned to CPU 0 for {flood_secs} s, {flood_reps} rounds over every (path, rule count); ns/packet = the sender thread's CPU time / packets delivered to the receiving interface (the receive side runs in softirq in the sender's context)"
        ),
    ];
    throughput(&mut report, reps, iperf_secs, rr_secs);
    policy_cost(
        &mut report,
        (run_reps, run_repeat),
        (flood_reps, flood_secs),
    );
    report
}

/// A topology with its servers running; servers go before the namespaces (field order).
struct Path {
    iperf: Process,
    rr: Process,
    hosts: Box<dyn Hosts>,
    _logs: tempfile::TempDir,
}

impl Path {
    fn new(hosts: Box<dyn Hosts>) -> Self {
        let logs = tempfile::tempdir().expect("log dir");
        let mut command = traffic(hosts.server(), "iperf3");
        command.args(["-s", "-p", IPERF_PORT]);
        let iperf = Process::spawn("iperf3 -s", &mut command, &logs.path().join("iperf3.log"));
        let mut command = tool_in(
            hosts.server(),
            0,
            "rr-server",
            &["--port".to_owned(), RR_PORT.to_owned()],
        );
        let rr = Process::spawn("rr-server", &mut command, &logs.path().join("rr.log"));
        Self {
            iperf,
            rr,
            hosts,
            _logs: logs,
        }
    }

    /// Gbit/s received by the server over `streams` parallel streams.
    fn iperf(&self, streams: u32, secs: u32) -> f64 {
        let ip = self.hosts.server_ip().to_string();
        let mut last = String::new();
        // The server may still be starting, or busy finishing the previous test.
        for _ in 0..5 {
            let out = traffic(self.hosts.client(), "iperf3")
                .args([
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
                ])
                .output()
                .expect("run iperf3");
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success()
                && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64()
            {
                return bps / 1e9;
            }
            last = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "iperf3 to {ip} failed; server log:\n{}\nlast client output:\n{last}",
            self.iperf.log()
        );
    }

    /// Transactions per second.
    fn rr(&self, secs: f64) -> f64 {
        let addr = format!("{}:{RR_PORT}", self.hosts.server_ip());
        let out = tool_in(
            self.hosts.client(),
            0,
            "rr-client",
            &[
                "--addr".to_owned(),
                addr,
                "--secs".to_owned(),
                secs.to_string(),
            ],
        )
        .output()
        .expect("run rr-client");
        assert!(
            out.status.success(),
            "rr-client failed: {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.rr.log()
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("rr-client prints a rate")
    }
}

fn throughput(report: &mut Report, reps: usize, iperf_secs: u32, rr_secs: f64) {
    assert!(self_exe().exists(), "hivemind-bench cannot find itself");
    let bridge = BridgeNet::new(true);
    let nf_default = bridge.netfilter_setting();
    let bridge_off = BridgeNet::new(false);
    let nf_off = bridge_off.netfilter_setting();
    assert_eq!(nf_off, "0", "bridge-nf-call-iptables did not switch off");
    // No policy selects either container: the default, open state.
    let node = HivemindNode::new(policy::CLIENT_IDENTITY, policy::SERVER_IDENTITY);
    let plumb: Vec<String> = node
        .plumb_times
        .iter()
        .map(|d| format!("{:.1} ms", ms(*d)))
        .collect();
    let hosts: Vec<(&str, Box<dyn Hosts>)> = vec![
        ("hivemind", Box::new(node)),
        ("bridge", Box::new(bridge)),
        ("bridge, nf off", Box::new(bridge_off)),
        ("veth pair", Box::new(DirectNet::new())),
    ];
    let names: Vec<&str> = hosts.iter().map(|(name, _)| *name).collect();
    let paths: Vec<Path> = hosts.into_iter().map(|(_, h)| Path::new(h)).collect();
    // Every path works before anything is timed (and the first connection's ARP is done).
    for (name, path) in names.iter().zip(&paths) {
        check_interrupted();
        let rate = path.rr(0.2);
        assert!(rate > 0.0, "{name}: no request/response traffic");
    }

    let mut table = Table::new(
        "container → container on one node (median of rounds)",
        &names,
    );
    table.row(TCP_1, "Gbit/s", Better::Higher);
    table.row(TCP_4, "Gbit/s", Better::Higher);
    table.row(RR, "trans/s", Better::Higher);
    for round in 0..reps {
        for metric in 0..3 {
            interleave(1, paths.len(), |_, k| {
                let p = (round + k) % paths.len();
                let value = match metric {
                    0 => paths[p].iperf(1, iperf_secs),
                    1 => paths[p].iperf(4, iperf_secs),
                    _ => paths[p].rr(rr_secs),
                };
                table.rows[metric].cells[p].push(value);
            });
        }
        eprintln!("datapath: throughput round {}/{reps} done", round + 1);
    }

    for (metric, label) in [(TCP_1, "TCP 1 stream"), (TCP_4, "TCP 4 streams")] {
        for (column, base) in [(1, "bridge"), (2, "bridge with bridge-nf off")] {
            let rounds = table.paired_ratios(metric, column).unwrap_or_default();
            let ratio = table.ratio(metric, column).unwrap_or(f64::NAN);
            report.target(
                &format!("{label} vs {base}"),
                ">= 1.00x",
                format!(
                    "{}; {:.2} vs {:.2} Gbit/s",
                    Report::ratio_got(&rounds, |r| r >= 1.0),
                    table.median(metric, 0).unwrap_or(f64::NAN),
                    table.median(metric, column).unwrap_or(f64::NAN)
                ),
                ratio >= 1.0,
            );
        }
    }
    report.notes.push(format!(
        "net.bridge.bridge-nf-call-iptables in a new namespace here: {nf_default} (the \"bridge\" column); \"bridge, nf off\" sets it to 0"
    ));
    report.notes.push(format!(
        "a container's network as the agent makes it (veth pair, addresses, routes, neighbours, endpoint, both programs attached) took {}",
        plumb.join(" and ")
    ));
    report.notes.push("hivemind: the agent's own plumbing (net::link) and programs (net::dataplane), no policy selecting either container; packets go hm_from_container → bpf_redirect_peer straight into the peer's eth0".to_owned());
    report.tables.push(table);
    drop(paths);
}

fn policy_cost(
    report: &mut Report,
    (run_reps, repeat): (usize, u32),
    (flood_reps, secs): (usize, f64),
) {
    let sets: Vec<RuleSet> = RULE_COUNTS.iter().map(|n| RuleSet::compile(*n)).collect();
    for set in &sets {
        report.notes.push(format!(
            "{} rules compile to {} policy map entries and {} CIDR identities",
            set.rules,
            set.entries.len(),
            set.cidrs.len()
        ));
    }
    let run_table = test_run_table(&sets, run_reps, repeat);
    let (flood_table, load_table) = flood_tables(report, &sets, flood_reps, secs);
    let growth = growth_table(&sets, &run_table, &flood_table);
    policy_targets(report, &growth);
    report.notes.push("the flood's hivemind path drops in hm_from_container on the sender's host veth, before any IP processing; iptables drops in the target's INPUT hook after IP input and routing — an early drop is part of what is being compared".to_owned());
    report.notes.push("a drop also writes a verdict event to the ring buffer (the agent's reader drains it); under test-run nothing drains it, so the deny columns measure a full ring (the write fails fast)".to_owned());
    report.tables.push(flood_table);
    report.tables.push(run_table);
    report.tables.push(growth);
    report.tables.push(load_table);
}

fn row_name(rules: usize) -> String {
    format!("{rules} rules")
}

/// `BPF_PROG_TEST_RUN`: one dataplane per rule count, rounds interleaved over all of them.
fn test_run_table(sets: &[RuleSet], reps: usize, repeat: u32) -> Table {
    let probes: Vec<TestRunProbe> = sets.iter().map(TestRunProbe::new).collect();
    let packets = [
        policy::allowed_packet(),
        policy::denied_packet(),
        policy::flood_packet(),
    ];
    let mut table = Table::new(
        "policy programs under BPF_PROG_TEST_RUN (ns/packet, median of rounds)",
        &[
            "hm_to_container, allowed (rule hit)",
            "hm_to_container, default deny",
            "hm_from_container, the flood's drop",
        ],
    )
    .without_ratios();
    for set in sets {
        table.row(row_name(set.rules), "ns/pkt", Better::Lower);
    }
    interleave(reps, probes.len() * packets.len(), |_, v| {
        let (i, kind) = (v / packets.len(), v % packets.len());
        table.rows[i].cells[kind].push(probes[i].ns_per_packet(&packets[kind], repeat));
    });
    table
}

/// The flood through Hivemind and through iptables at every rule count, interleaved; and how
/// long each side took to load its rules. Returns (flood table, load table).
fn flood_tables(report: &mut Report, sets: &[RuleSet], reps: usize, secs: f64) -> (Table, Table) {
    let mut ours = HivemindFlood::new();
    let theirs: Vec<IptablesHost> = sets.iter().map(|s| IptablesHost::new(s.rules)).collect();
    let mut flood = Table::new(
        "policy under a UDP flood: CPU time per packet from send() to the drop (ns/packet, median of rounds)",
        &[
            "hivemind (TC on the host veth)",
            "iptables-nft (INPUT chain)",
        ],
    );
    let mut load = Table::new(
        "loading a rule set (ms; hivemind: replace_policy over whichever set the interleaving left, stale CIDR identities removed after the swap; iptables: iptables-nft-restore into an empty namespace, once)",
        &["hivemind replace_policy", "iptables-nft-restore"],
    );
    for (set, host) in sets.iter().zip(&theirs) {
        flood.row(row_name(set.rules), "ns/pkt", Better::Lower);
        let row = load.row(row_name(set.rules), "ms", Better::Lower);
        row.cells[1].push(ms(host.load_time));
    }
    let mut cpu_shares = Samples::default();
    interleave(reps, sets.len() * 2, |_, v| {
        let (i, kind) = (v / 2, v % 2);
        let result = if kind == 0 {
            if let Some(took) = ours.load(&sets[i]) {
                load.rows[i].cells[0].push(ms(took));
            }
            ours.flood(secs)
        } else {
            theirs[i].flood(secs)
        };
        #[allow(clippy::cast_precision_loss)] // packet counts
        if (result.delivered as f64) < 0.95 * result.sent as f64 {
            report.notes.push(format!(
                "{} at {} rules: {} of {} sent packets reached the receiving interface",
                if kind == 0 { "hivemind" } else { "iptables" },
                sets[i].rules,
                result.delivered,
                result.sent
            ));
        }
        flood.rows[i].cells[kind].push(result.ns_per_packet);
        cpu_shares.push(result.cpu_share);
    });
    report.notes.push(format!(
        "the flood sender got {:.0}% of CPU 0's wall time (median; {:.0}% at worst): the rest went to other work on the machine, which the CPU-time measure leaves out",
        cpu_shares.median() * 100.0,
        cpu_shares.min() * 100.0
    ));
    (flood, load)
}

/// Growth over 10 rules of each series, per round (paired).
fn growth_table(sets: &[RuleSet], run: &Table, flood: &Table) -> Table {
    let mut growth = Table::new(
        "growth of the per-packet cost over 10 rules (x, median of per-round ratios)",
        &[
            "test-run, hit",
            "test-run, deny",
            "test-run, flood's drop",
            "hivemind flood",
            "iptables flood",
        ],
    )
    .without_ratios();
    for (row, set) in sets.iter().enumerate().skip(1) {
        let cells =
            [(run, 0), (run, 1), (run, 2), (flood, 0), (flood, 1)].map(|(table, column)| {
                let at_n = &table.rows[row].cells[column];
                let at_10 = &table.rows[0].cells[column];
                Samples(at_n.0.iter().zip(&at_10.0).map(|(a, b)| a / b).collect())
            });
        growth
            .row(format!("{} / 10 rules", set.rules), "x", Better::Lower)
            .cells = cells.to_vec();
    }
    growth
}

fn policy_targets(report: &mut Report, growth: &Table) {
    // The growth furthest from 1.0 in a column.
    let worst = |column: usize| {
        growth
            .rows
            .iter()
            .map(|r| r.cells[column].median())
            .fold(1.0_f64, |worst, g| {
                if (g - 1.0).abs() > (worst - 1.0).abs() {
                    g
                } else {
                    worst
                }
            })
    };
    let iptables = growth.rows.last().map_or(f64::NAN, |r| r.cells[4].median());
    for (column, what) in [
        (0, "test-run, rule hit"),
        (1, "test-run, default deny"),
        (2, "test-run, the flood's drop"),
        (3, "UDP flood"),
    ] {
        let w = worst(column);
        report.target(
            &format!("policy cost flat from 10 to 100 000 rules ({what}) while iptables grows"),
            "every rule count within ±10% of 10 rules; iptables > 1.10x",
            format!("worst {w:.2}x; iptables {iptables:.1}x at 100 000 rules"),
            (w - 1.0).abs() <= 0.10 && iptables > 1.1,
        );
    }
}
