//! Per-packet cost of policy against the number of rules: Hivemind's programs (under
//! `BPF_PROG_TEST_RUN`, and in a real namespace path under a UDP flood) next to iptables-nft
//! with the same rule counts under the same flood.
//!
//! Rule sets are the policy compiler's output for `policy::synthetic(n)` (n rules over
//! n/32 policies, as the agent would load them), so the maps hold what real policies produce.
//! Identities: the server is `app-0`, whose ingress every set enforces (its first rule allows
//! `app-1` on TCP 1024); the test-run client is `app-1`; the flood's sender has an identity no
//! policy names, so its UDP packets reach the default deny of `app-0`'s ingress after every
//! probe has missed.
//!
//! The flood: one thread pinned to CPU 0 sends 64-byte UDP frames as fast as it can from a
//! client namespace. The receiving side's work — a veth hop, then Hivemind's TC program on the
//! host veth or the kernel's IP input and the iptables INPUT chain — runs in softirq on the
//! sending CPU, in the sender's context, when its `send` re-enables bottom halves. So the
//! sending thread's CPU time divided by the packets delivered to the receiving interface is
//! the whole per-packet cost, from `send` to the drop — and, being CPU time rather than wall
//! time, it does not change when other work shares the CPU (this machine's neighbours compile).

use std::{
    fmt::Write as _,
    io::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use hivemind_agent::{
    net::dataplane::{Dataplane, ProgramKind},
    policy::{PolicyRef, compile, synthetic, synthetic_apps},
};
use hivemind_common::{
    config::Config,
    endpoint::{Endpoint, FLAG_LOCAL},
    identity,
    policy::{PolicyKey, PolicyValue},
    reason,
};
use hivemind_tests::{
    Netns,
    packet::{Packet, SYN},
    util::unique,
    veth,
};

use super::topology::{CLIENT_IP, HivemindNode, SERVER_IP, rx_packets};

/// The flood sender's address in test runs (a third endpoint).
const FLOOD_SENDER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 4);
use crate::common::{ensure_ok, tool_in};

pub const RULE_COUNTS: [usize; 4] = [10, 1_000, 10_000, 100_000];

/// `app-0` and `app-1` of every synthetic set.
pub const SERVER_IDENTITY: u32 = identity::FIRST_APP;
pub const CLIENT_IDENTITY: u32 = identity::FIRST_APP + 1;
/// An app identity no generated policy selects or names.
pub const UNNAMED_IDENTITY: u32 = identity::FIRST_APP + 1_000_000;
/// The first rule of every set allows app-1 → app-0 on TCP 1024.
const ALLOWED_PORT: u16 = 1024;
const FLOOD_PORT: u16 = 9;

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;

/// A compiled rule set.
pub struct RuleSet {
    pub rules: usize,
    pub entries: Vec<(PolicyKey, PolicyValue)>,
    pub cidrs: Vec<(ipnet::Ipv4Net, u32)>,
}

impl RuleSet {
    pub fn compile(rules: usize) -> Self {
        let policies = synthetic(rules);
        let apps = synthetic_apps(rules);
        let refs: Vec<PolicyRef<'_>> = policies
            .iter()
            .zip(1..)
            .map(|(policy, id)| PolicyRef { id, policy })
            .collect();
        let compiled = compile(&refs, &apps);
        assert!(
            compiled.check_capacity().is_ok(),
            "{rules} synthetic rules overflow the maps"
        );
        Self {
            rules,
            entries: compiled.entries.into_iter().collect(),
            cidrs: compiled.cidrs,
        }
    }
}

/// A pin directory, removed with everything in it on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A dataplane loaded with one rule set, for `BPF_PROG_TEST_RUN` (nothing attached). Field
/// order: the dataplane closes its handles before the pins go.
pub struct TestRunProbe {
    dp: Dataplane,
    _pins: PinDir,
}

impl TestRunProbe {
    pub fn new(set: &RuleSet) -> Self {
        let pins = PinDir(PathBuf::from("/sys/fs/bpf/hivemind").join(unique("benchrun")));
        let mut dp = Dataplane::load(&pins.0).expect("load the dataplane");
        let endpoint = |identity, n: u8| Endpoint {
            ifindex: 1000 + u32::from(n),
            identity,
            flags: FLAG_LOCAL,
            mac: [0x02, 0x42, 0, 0, 0, n],
            gw_mac: [0x02, 0x42, 0, 0, 0, 0x80 | n],
            ..Endpoint::default()
        };
        dp.upsert_endpoint(SERVER_IP, endpoint(SERVER_IDENTITY, 3))
            .expect("server endpoint");
        dp.upsert_endpoint(CLIENT_IP, endpoint(CLIENT_IDENTITY, 2))
            .expect("client endpoint");
        // The flood's sender, for hm_from_container: test-run packets arrive on the loopback
        // device, and the program only accepts the source bound to the interface it runs on.
        dp.upsert_endpoint(
            FLOOD_SENDER_IP,
            Endpoint {
                ifindex: 1,
                ..endpoint(UNNAMED_IDENTITY, 4)
            },
        )
        .expect("flood sender endpoint");
        dp.set_config(Config {
            gateway_ip: u32::from_ne_bytes([10, 244, 0, 1]),
            ..Config::default()
        })
        .expect("config");
        dp.replace_policy(&set.entries, &set.cidrs)
            .expect("load the rule set");
        let probe = Self { dp, _pins: pins };
        // The method is only sound if the packets get the verdicts we think they get.
        assert_eq!(
            probe.run(&allowed_packet(), 1).0,
            TC_ACT_OK,
            "{} rules: app-1 → app-0:{ALLOWED_PORT}/tcp should pass",
            set.rules
        );
        assert_eq!(
            probe.run(&denied_packet(), 1).0,
            TC_ACT_SHOT,
            "{} rules: app-1 → app-0:{FLOOD_PORT}/udp should hit the default deny",
            set.rules
        );
        assert_eq!(
            probe.run(&flood_packet(), 1).0,
            TC_ACT_SHOT,
            "{} rules: the flood's packet should be dropped by hm_from_container",
            set.rules
        );
        probe
    }

    /// The flood's packet goes to `hm_from_container` (the sender's side, egress then the
    /// receiver's ingress); the others to `hm_to_container` (ingress only).
    fn run(&self, packet: &Probe, repeat: u32) -> (i32, Duration) {
        let kind = if packet.from_container {
            ProgramKind::FromContainer
        } else {
            ProgramKind::ToContainer
        };
        let out = self
            .dp
            .test_run(kind, &packet.bytes, repeat)
            .expect("test run");
        (out.action, out.duration)
    }

    /// Nanoseconds per run of the program on `packet`, averaged by the kernel over `repeat`
    /// runs.
    pub fn ns_per_packet(&self, packet: &Probe, repeat: u32) -> f64 {
        self.run(packet, repeat).1.as_secs_f64() * 1e9
    }
}

/// A crafted packet and the program it is for.
pub struct Probe {
    bytes: Vec<u8>,
    from_container: bool,
}

/// TCP SYN app-1 → app-0:1024, allowed by the first rule of every set.
pub fn allowed_packet() -> Probe {
    Probe {
        bytes: Packet::tcp(CLIENT_IP, 40_000, SERVER_IP, ALLOWED_PORT, SYN).build(),
        from_container: false,
    }
}

/// UDP app-1 → app-0:9: every probe misses, the enforced ingress drops it.
pub fn denied_packet() -> Probe {
    Probe {
        bytes: Packet::udp(CLIENT_IP, 40_000, SERVER_IP, FLOOD_PORT).build(),
        from_container: false,
    }
}

/// The flood's packet as the sender's host veth sees it: from an app no policy names (its
/// egress is open) to app-0:9/udp (every probe of app-0's ingress misses: default deny).
pub fn flood_packet() -> Probe {
    Probe {
        bytes: Packet::udp(FLOOD_SENDER_IP, 40_000, SERVER_IP, FLOOD_PORT).build(),
        from_container: true,
    }
}

/// One flood.
#[derive(Clone, Copy, Debug)]
pub struct FloodResult {
    /// The sender's CPU time per delivered packet.
    pub ns_per_packet: f64,
    pub delivered: u64,
    pub sent: u64,
    /// The sender's CPU time over the wall time: how much of its CPU it got.
    pub cpu_share: f64,
}

/// Floods `dst:9` from `sender` for `secs`, counting what `rx()` says arrived.
fn flood(sender: &Netns, dst: Ipv4Addr, secs: f64, rx: impl Fn() -> u64) -> FloodResult {
    let before = rx();
    let out = tool_in(
        sender,
        0,
        "udp-flood",
        &[
            "--addr".to_owned(),
            format!("{dst}:{FLOOD_PORT}"),
            "--secs".to_owned(),
            secs.to_string(),
        ],
    )
    .output()
    .expect("run udp-flood");
    ensure_ok("udp-flood", &out);
    let delivered = rx() - before;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let mut number = || -> f64 {
        words
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("udp-flood printed {text:?}"))
    };
    let (sent, elapsed, cpu) = (number(), number(), number());
    assert!(delivered > 0, "the flood delivered nothing ({text})");
    #[allow(clippy::cast_precision_loss)] // packet counts far below 2^52
    let ns_per_packet = cpu * 1e9 / delivered as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a packet count
    let sent = sent as u64;
    FloodResult {
        ns_per_packet,
        delivered,
        sent,
        cpu_share: cpu / elapsed,
    }
}

/// Hivemind under the flood: a node whose sender container has an identity no policy names
/// and whose server container is app-0.
pub struct HivemindFlood {
    node: HivemindNode,
    loaded: Option<usize>,
}

impl HivemindFlood {
    pub fn new() -> Self {
        Self {
            node: HivemindNode::new(UNNAMED_IDENTITY, SERVER_IDENTITY),
            loaded: None,
        }
    }

    /// Makes `set` the node's policy (unless it is already); returns the swap time if it swapped.
    pub fn load(&mut self, set: &RuleSet) -> Option<Duration> {
        if self.loaded == Some(set.rules) {
            return None;
        }
        let took = self
            .node
            .replace_policy(set.entries.clone(), set.cidrs.clone());
        self.loaded = Some(set.rules);
        Some(took)
    }

    pub fn flood(&self, secs: f64) -> FloodResult {
        let dropped_before = self.node.counter(reason::DROPPED_POLICY);
        let result = flood(&self.node.containers[0].netns, SERVER_IP, secs, || {
            self.node.client_rx_packets()
        });
        let dropped = self.node.counter(reason::DROPPED_POLICY) - dropped_before;
        // Every delivered packet must have met the policy and been dropped by it.
        assert!(
            dropped + 64 >= result.delivered && dropped <= result.delivered + 64,
            "policy drops ({dropped}) do not match delivered packets ({})",
            result.delivered
        );
        result
    }
}

/// A sender and a target namespace on one veth pair; the target's iptables (`nf_tables`
/// backend) INPUT chain has `rules` ACCEPT rules for other sources and policy DROP, so the
/// flood walks every rule and is dropped — the same question as Hivemind's default deny.
pub struct IptablesHost {
    sender: Netns,
    target: Netns,
    target_if: String,
    pub load_time: Duration,
}

const IPT_SENDER: &str = "10.97.0.2";
const IPT_TARGET: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 3);

impl IptablesHost {
    pub fn new(rules: usize) -> Self {
        let sender = Netns::new("hbf");
        let target = Netns::new("hbt");
        let (_, target_if) = veth(
            &sender,
            &format!("{IPT_SENDER}/24"),
            &target,
            &format!("{IPT_TARGET}/24"),
        );
        let mut script = String::from(
            "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        );
        for i in 0..rules {
            // Distinct /32 sources (100.64.0.0/10 and up), one TCP port each: what a
            // per-peer allow list looks like. None matches the flood's source.
            let _ = writeln!(
                script,
                "-A INPUT -s 100.{}.{}.{}/32 -p tcp -m tcp --dport {} -j ACCEPT",
                64 + (i >> 16),
                (i >> 8) & 0xff,
                i & 0xff,
                1024 + i % 60_000
            );
        }
        script.push_str("COMMIT\n");
        let start = Instant::now();
        let mut child = target
            .command("iptables-nft-restore")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start iptables-nft-restore");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write the rules");
        let out = child.wait_with_output().expect("iptables-nft-restore");
        let load_time = start.elapsed();
        ensure_ok(&format!("iptables-nft-restore of {rules} rules"), &out);
        Self {
            sender,
            target,
            target_if,
            load_time,
        }
    }

    pub fn flood(&self, secs: f64) -> FloodResult {
        flood(&self.sender, IPT_TARGET, secs, || {
            rx_packets(&self.target, &self.target_if)
        })
    }
}
