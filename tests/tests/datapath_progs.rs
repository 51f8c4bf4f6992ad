//! Every program under `BPF_PROG_TEST_RUN` on crafted packets: verdicts, rewritten bytes,
//! counters and events. Each test loads its own dataplane into its own pin directory.
//!
//! Test-run skbs arrive on the loopback device (ifindex 1), so the "sending" container of a
//! `hm_from_container` run is the endpoint bound to ifindex 1.

use std::{net::Ipv4Addr, path::PathBuf, time::Instant};

use hivemind_agent::net::dataplane::{Dataplane, ProgramKind};
use hivemind_common::{
    config::{Config, FLAG_EVENTS_FORWARDED},
    ct::{PortKey, PortTarget},
    endpoint::{Endpoint, FLAG_LOCAL},
    event::{VERDICT_DROPPED, VERDICT_FORWARDED, VerdictEvent},
    identity,
    policy::{
        ACTION_ALLOW, ACTION_DENY, ANY_PORT, DIRECTION_EGRESS, DIRECTION_INGRESS, ENFORCED_PORT,
        PROTO_ANY, PolicyKey, PolicyValue,
    },
    reason,
};
use hivemind_tests::{
    packet::{self, ACK, ECHO_REPLY, ECHO_REQUEST, ICMP, Packet, SYN, TCP, UDP},
    util::unique,
};

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
const XDP_PASS: i32 = 2;

const A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
const C: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 4);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CIDR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

const ID_A: u32 = identity::FIRST_APP;
const ID_B: u32 = identity::FIRST_APP + 1;
const ID_C: u32 = identity::FIRST_APP + 2;
const ID_CIDR: u32 = identity::FIRST_CIDR;

const LO: u32 = 1;
const IF_B: u32 = 1001;
const IF_C: u32 = 1002;

fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn mac(last: u8) -> [u8; 6] {
    [0x02, 0x42, 0, 0, 0, last]
}

fn endpoint(ifindex: u32, identity: u32, n: u8) -> Endpoint {
    Endpoint {
        ifindex,
        identity,
        flags: FLAG_LOCAL,
        mac: mac(n),
        gw_mac: mac(0x80 | n),
        ..Endpoint::default()
    }
}

/// A pin directory, removed (with every pin in it) on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(prefix: &str) -> Self {
        Self(PathBuf::from("/sys/fs/bpf/hivemind").join(unique(prefix)))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A dataplane loaded into its own pin directory. Field order: the dataplane closes its
/// handles before the pins go.
struct Fixture {
    dp: Dataplane,
    _pins: PinDir,
}

impl Fixture {
    /// Endpoints A (on lo: the test-run sender), B and C; node and gateway addresses set.
    fn new() -> Self {
        let pins = PinDir::new("progs");
        let mut dp = Dataplane::load(&pins.0).expect("load the dataplane");
        dp.upsert_endpoint(A, endpoint(LO, ID_A, 2))
            .expect("endpoint A");
        dp.upsert_endpoint(B, endpoint(IF_B, ID_B, 3))
            .expect("endpoint B");
        dp.upsert_endpoint(C, endpoint(IF_C, ID_C, 4))
            .expect("endpoint C");
        dp.set_config(Config {
            node_ip: wire(NODE),
            gateway_ip: wire(GATEWAY),
            ..Config::default()
        })
        .expect("config");
        Self { dp, _pins: pins }
    }

    fn run(&self, kind: ProgramKind, pkt: &[u8]) -> (i32, Vec<u8>) {
        let out = self.dp.test_run(kind, pkt, 1).expect("test run");
        (out.action, out.packet)
    }

    fn run_from(&self, pkt: &Packet) -> i32 {
        self.run(ProgramKind::FromContainer, &pkt.build()).0
    }

    fn to_container(&self, pkt: &Packet) -> i32 {
        self.run(ProgramKind::ToContainer, &pkt.build()).0
    }

    fn count(&self, reason: u32) -> u64 {
        self.dp
            .counters()
            .expect("counters")
            .into_iter()
            .find(|c| c.reason == reason)
            .map_or(0, |c| c.packets)
    }

    fn policy(&mut self, rules: &[(PolicyKey, u32, u32)], cidrs: &[(&str, u32)]) {
        let entries: Vec<(PolicyKey, PolicyValue)> = rules
            .iter()
            .map(|(key, action, policy_id)| {
                (
                    *key,
                    PolicyValue {
                        action: *action,
                        policy_id: *policy_id,
                    },
                )
            })
            .collect();
        let cidrs: Vec<(ipnet::Ipv4Net, u32)> = cidrs
            .iter()
            .map(|(net, id)| (net.parse().expect("CIDR"), *id))
            .collect();
        self.dp
            .replace_policy(&entries, &cidrs)
            .expect("replace policy");
        // Each case starts without remembered flows.
        self.dp.flush_conntrack();
    }
}

fn key(identity: u32, peer: u32, protocol: u8, dport: u16, direction: u8) -> PolicyKey {
    PolicyKey {
        identity,
        peer,
        dport,
        protocol,
        direction,
    }
}

fn enforced(identity: u32, direction: u8) -> (PolicyKey, u32, u32) {
    enforced_by(identity, direction, 0)
}

/// The marker as the compiler writes it: naming the policy that enforces the direction.
fn enforced_by(identity: u32, direction: u8, policy_id: u32) -> (PolicyKey, u32, u32) {
    (
        key(identity, identity::ANY, PROTO_ANY, ENFORCED_PORT, direction),
        ACTION_DENY,
        policy_id,
    )
}

fn allow(k: PolicyKey, policy_id: u32) -> (PolicyKey, u32, u32) {
    (k, ACTION_ALLOW, policy_id)
}

fn deny(k: PolicyKey, policy_id: u32) -> (PolicyKey, u32, u32) {
    (k, ACTION_DENY, policy_id)
}

#[test]
fn non_ipv4_passes_untouched() {
    let f = Fixture::new();
    let arp = packet::arp();
    for kind in [
        ProgramKind::FromContainer,
        ProgramKind::ToContainer,
        ProgramKind::NodeIngress,
    ] {
        let (action, out) = f.run(kind, &arp);
        assert_eq!(action, TC_ACT_OK, "{kind:?}");
        assert_eq!(out, arp, "{kind:?} left ARP alone");
    }
    assert_eq!(f.count(reason::PASS_NOT_IPV4), 3);
}

#[test]
fn truncated_headers_are_dropped_as_malformed() {
    let f = Fixture::new();
    let full = Packet::tcp(A, 40000, B, 80, SYN).build();
    // The kernel itself refuses to test-run a frame of no more than an Ethernet header, or an
    // IPv4 frame without a whole IPv4 header; the programs' own bounds checks for those cases
    // (every read is a checked `bpf_skb_load_bytes`) are exercised by the cases after this.
    for cut in [13, 14, 15, 14 + 12] {
        assert!(
            f.dp.test_run(ProgramKind::FromContainer, &full[..cut], 1)
                .is_err(),
            "{cut} bytes"
        );
    }
    // TCP header cut short (the IP length says so too).
    let mut short_tcp = Packet::tcp(A, 40000, B, 80, SYN);
    short_tcp.l4.truncate(12);
    let short_tcp = short_tcp.build();
    // The IP total length claims more than the frame holds.
    let mut lying = full.clone();
    lying[16..18].copy_from_slice(&1400u16.to_be_bytes());
    // IHL below 5.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    // IHL 15 (40 bytes of options) in a packet whose IP length ends before the options do.
    let mut options_cut = full.clone();
    options_cut[14] = 0x4f;
    options_cut[16..18].copy_from_slice(&40u16.to_be_bytes());
    // Not IP version 4 behind an IPv4 ethertype.
    let mut version6 = full.clone();
    version6[14] = 0x65;
    for (name, pkt) in [
        ("short TCP", &short_tcp),
        ("lying length", &lying),
        ("ihl < 5", &bad_ihl),
        ("options cut", &options_cut),
        ("version 6", &version6),
    ] {
        for kind in [ProgramKind::FromContainer, ProgramKind::ToContainer] {
            let run = f.dp.test_run(kind, pkt, 1);
            let action = run
                .unwrap_or_else(|e| panic!("{name} via {kind:?}: {e:?}"))
                .action;
            assert_eq!(action, TC_ACT_SHOT, "{name} via {kind:?}");
        }
    }
    assert_eq!(f.count(reason::DROPPED_MALFORMED), 10);
    // The node's uplink is not ours to police: truncated frames go to the stack.
    assert_eq!(f.run(ProgramKind::NodeIngress, &short_tcp).0, TC_ACT_OK);
    // Malformed drops are events too.
    let mut f = f;
    let events = f.dp.drain_events();
    assert!(
        events
            .iter()
            .all(|e| e.verdict == VERDICT_DROPPED && e.reason == reason::DROPPED_MALFORMED),
        "{events:?}"
    );
    assert_eq!(events.len(), 10);
}

#[test]
fn ip_options_are_skipped_to_find_the_ports() {
    let mut f = Fixture::new();
    f.policy(
        &[
            enforced(ID_B, DIRECTION_INGRESS),
            allow(key(ID_B, ID_A, TCP, 80, DIRECTION_INGRESS), 1),
        ],
        &[],
    );
    // Two 4-byte options (NOPs and a 4-byte router alert): IHL 7.
    let options = [1, 1, 1, 1, 0x94, 4, 0, 0];
    let to_80 = Packet::tcp(A, 40000, B, 80, SYN).with_options(&options);
    let to_81 = Packet::tcp(A, 40000, B, 81, SYN).with_options(&options);
    let (action, out) = f.run(ProgramKind::FromContainer, &to_80.build());
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(packet::dport(&out), 80);
    assert!(packet::ip_checksum_ok(&out));
    assert_eq!(f.run_from(&to_81), TC_ACT_SHOT);
}

#[test]
fn spoofed_sources_are_dropped() {
    let f = Fixture::new();
    // Nobody's address, and B's address sent from A's interface.
    assert_eq!(
        f.run_from(&Packet::tcp(Ipv4Addr::new(10, 244, 0, 99), 1, B, 80, SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(f.run_from(&Packet::tcp(B, 1, C, 80, SYN)), TC_ACT_SHOT);
    assert_eq!(f.count(reason::DROPPED_SPOOFED), 2);
    // The real owner passes.
    assert_eq!(f.run_from(&Packet::tcp(A, 1, C, 80, SYN)), TC_ACT_REDIRECT);
}

#[test]
fn fragments_first_is_judged_later_ones_dropped() {
    let mut f = Fixture::new();
    f.policy(
        &[
            enforced(ID_B, DIRECTION_INGRESS),
            allow(key(ID_B, ID_A, UDP, 53, DIRECTION_INGRESS), 1),
        ],
        &[],
    );
    // First fragment: MF set, offset 0, carries the UDP header.
    let first = Packet::udp(A, 5000, B, 53).with_frag(0x2000);
    assert_eq!(f.run_from(&first), TC_ACT_REDIRECT);
    let first_denied = Packet::udp(A, 5000, B, 54).with_frag(0x2000);
    assert_eq!(f.run_from(&first_denied), TC_ACT_SHOT);
    // A later fragment (offset 185 * 8 bytes) has no ports to judge.
    let later = Packet::udp(A, 5000, B, 53).with_frag(185);
    assert_eq!(f.run_from(&later), TC_ACT_SHOT);
    assert_eq!(f.to_container(&later), TC_ACT_SHOT);
    assert_eq!(f.count(reason::DROPPED_FRAGMENT), 2);
}

#[test]
fn local_delivery_rewrites_macs_and_ttl_and_redirects() {
    let f = Fixture::new();
    let pkt = Packet::tcp(A, 40000, B, 80, SYN);
    let (action, out) = f.run(ProgramKind::FromContainer, &pkt.build());
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(packet::dst_mac(&out), mac(3), "B's eth0");
    assert_eq!(packet::src_mac(&out), mac(0x83), "B's host veth");
    assert_eq!(packet::ttl(&out), 63);
    assert!(
        packet::ip_checksum_ok(&out),
        "IP checksum after the TTL change"
    );
    assert!(packet::l4_checksum_ok(&out));
    assert_eq!(f.count(reason::FORWARDED_LOCAL), 1);
    // TTL 1 is the host stack's to answer (ICMP time exceeded).
    let mut dying = pkt;
    dying.ttl = 1;
    assert_eq!(f.run_from(&dying), TC_ACT_OK);
    // Anything not a container goes to the host stack.
    assert_eq!(f.run_from(&Packet::udp(A, 5000, WORLD_IP, 53)), TC_ACT_OK);
    assert_eq!(f.run_from(&Packet::udp(A, 5000, GATEWAY, 53)), TC_ACT_OK);
    assert_eq!(f.count(reason::PASS_TO_HOST), 3);
}

#[test]
#[allow(clippy::too_many_lines)] // one rule kind after another, on one dataplane
fn policy_rule_kinds() {
    let mut f = Fixture::new();
    let ingress = DIRECTION_INGRESS;

    // Peer app identity + port + protocol.
    f.policy(
        &[
            enforced(ID_B, ingress),
            allow(key(ID_B, ID_A, TCP, 80, ingress), 1),
        ],
        &[],
    );
    assert_eq!(
        f.run_from(&Packet::tcp(A, 1000, B, 80, SYN)),
        TC_ACT_REDIRECT
    );
    assert_eq!(f.run_from(&Packet::tcp(A, 1000, B, 81, SYN)), TC_ACT_SHOT);
    assert_eq!(f.run_from(&Packet::udp(A, 1000, B, 80)), TC_ACT_SHOT);
    // Unenforced C is open.
    assert_eq!(
        f.run_from(&Packet::tcp(A, 1000, C, 81, SYN)),
        TC_ACT_REDIRECT
    );

    // Protocol only.
    f.policy(
        &[
            enforced(ID_B, ingress),
            allow(key(ID_B, ID_A, UDP, ANY_PORT, ingress), 2),
        ],
        &[],
    );
    assert_eq!(f.run_from(&Packet::udp(A, 1000, B, 5353)), TC_ACT_REDIRECT);
    assert_eq!(f.run_from(&Packet::tcp(A, 1000, B, 80, SYN)), TC_ACT_SHOT);

    // Anything from the peer.
    f.policy(
        &[
            enforced(ID_B, ingress),
            allow(key(ID_B, ID_A, PROTO_ANY, ANY_PORT, ingress), 3),
        ],
        &[],
    );
    assert_eq!(
        f.run_from(&Packet::tcp(A, 1000, B, 9999, SYN)),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        f.run_from(&Packet::icmp_echo(A, B, ECHO_REQUEST, 7)),
        TC_ACT_REDIRECT
    );

    // Any peer, one port.
    f.policy(
        &[
            enforced(ID_B, ingress),
            allow(key(ID_B, identity::ANY, TCP, 80, ingress), 4),
        ],
        &[],
    );
    assert_eq!(
        f.run_from(&Packet::tcp(A, 1000, B, 80, SYN)),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        f.to_container(&Packet::tcp(WORLD_IP, 1000, B, 80, SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        f.to_container(&Packet::tcp(WORLD_IP, 1000, B, 22, SYN)),
        TC_ACT_SHOT
    );

    // A CIDR peer, resolved through the LPM trie; the rest of the world stays out.
    f.policy(
        &[
            enforced(ID_B, ingress),
            allow(key(ID_B, ID_CIDR, TCP, 80, ingress), 5),
        ],
        &[("192.0.2.0/24", ID_CIDR)],
    );
    assert_eq!(
        f.to_container(&Packet::tcp(CIDR_IP, 1000, B, 80, SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        f.to_container(&Packet::tcp(WORLD_IP, 1000, B, 80, SYN)),
        TC_ACT_SHOT
    );
    // The node itself is HOST, not WORLD.
    f.policy(
        &[
            enforced(ID_B, ingress),
            allow(key(ID_B, identity::HOST, PROTO_ANY, ANY_PORT, ingress), 6),
        ],
        &[],
    );
    assert_eq!(
        f.to_container(&Packet::tcp(NODE, 1000, B, 80, SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        f.to_container(&Packet::tcp(GATEWAY, 1000, B, 80, SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        f.to_container(&Packet::tcp(WORLD_IP, 1000, B, 80, SYN)),
        TC_ACT_SHOT
    );

    // Deny beats allow, and names its policy in counters and events.
    f.policy(
        &[
            allow(key(ID_B, identity::ANY, PROTO_ANY, ANY_PORT, ingress), 6),
            deny(key(ID_B, ID_A, TCP, 80, ingress), 7),
        ],
        &[],
    );
    let _ = f.dp.drain_events();
    assert_eq!(f.run_from(&Packet::tcp(A, 1000, B, 80, SYN)), TC_ACT_SHOT);
    assert_eq!(
        f.run_from(&Packet::tcp(A, 1000, B, 81, SYN)),
        TC_ACT_REDIRECT
    );
    let per_policy = f.dp.policy_counters().expect("policy counters");
    assert_eq!(
        per_policy.get(&7).map(|c| c.packets),
        Some(1),
        "{per_policy:?}"
    );
    let events = f.dp.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!(
        (e.verdict, e.reason, e.policy_id, e.direction),
        (VERDICT_DROPPED, reason::DROPPED_POLICY, 7, ingress)
    );
    assert_eq!(
        (e.saddr, e.daddr, e.sport, e.dport, e.protocol),
        (wire(A), wire(B), 1000, 80, TCP)
    );
    assert_eq!((e.src_identity, e.dst_identity), (ID_A, ID_B));

    // Egress: A may only resolve names out in the world (policy 8 enforces and allows).
    let default_denied = |f: &Fixture| {
        f.dp.policy_counters()
            .expect("policy counters")
            .get(&8)
            .map_or(0, |c| c.packets)
    };
    let before = default_denied(&f);
    f.policy(
        &[
            enforced_by(ID_A, DIRECTION_EGRESS, 8),
            allow(key(ID_A, identity::WORLD, UDP, 53, DIRECTION_EGRESS), 8),
        ],
        &[],
    );
    assert_eq!(f.run_from(&Packet::udp(A, 1000, WORLD_IP, 53)), TC_ACT_OK);
    assert_eq!(
        f.run_from(&Packet::tcp(A, 1000, WORLD_IP, 443, SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(f.run_from(&Packet::tcp(A, 1000, B, 80, SYN)), TC_ACT_SHOT);
    let events = f.dp.drain_events();
    assert!(
        events
            .iter()
            .all(|e| e.direction == DIRECTION_EGRESS && e.policy_id == 8),
        "default-deny drops name the enforcing policy: {events:?}"
    );
    assert_eq!(
        default_denied(&f) - before,
        2,
        "default-deny drops count under the enforcing policy"
    );

    // ICMP is a protocol like the others.
    f.policy(
        &[
            enforced(ID_B, ingress),
            allow(key(ID_B, ID_A, ICMP, ANY_PORT, ingress), 9),
        ],
        &[],
    );
    assert_eq!(
        f.run_from(&Packet::icmp_echo(A, B, ECHO_REQUEST, 7)),
        TC_ACT_REDIRECT
    );
    assert_eq!(f.run_from(&Packet::tcp(A, 1000, B, 80, SYN)), TC_ACT_SHOT);

    // An empty rule set opens everything again.
    f.policy(&[], &[]);
    assert_eq!(
        f.run_from(&Packet::tcp(A, 1000, B, 81, SYN)),
        TC_ACT_REDIRECT
    );
}

#[test]
fn conntrack_lets_replies_through_a_default_deny_direction() {
    let mut f = Fixture::new();
    // A's egress is default-deny and allows nothing.
    f.policy(&[enforced(ID_A, DIRECTION_EGRESS)], &[]);
    assert_eq!(
        f.run_from(&Packet::tcp(A, 80, WORLD_IP, 40000, SYN | ACK)),
        TC_ACT_SHOT,
        "no flow yet"
    );
    // A client reaches A (ingress open) ...
    assert_eq!(
        f.to_container(&Packet::tcp(WORLD_IP, 40000, A, 80, SYN)),
        TC_ACT_OK
    );
    // ... so A's answers pass, and only those.
    assert_eq!(
        f.run_from(&Packet::tcp(A, 80, WORLD_IP, 40000, SYN | ACK)),
        TC_ACT_OK
    );
    assert_eq!(
        f.run_from(&Packet::tcp(A, 80, WORLD_IP, 40001, ACK)),
        TC_ACT_SHOT
    );
    assert_eq!(
        f.run_from(&Packet::tcp(A, 81, WORLD_IP, 40000, ACK)),
        TC_ACT_SHOT
    );
    // ICMP echo: the id pairs request and reply.
    assert_eq!(
        f.to_container(&Packet::icmp_echo(WORLD_IP, A, ECHO_REQUEST, 0x1234)),
        TC_ACT_OK
    );
    assert_eq!(
        f.run_from(&Packet::icmp_echo(A, WORLD_IP, ECHO_REPLY, 0x1234)),
        TC_ACT_OK
    );
    assert_eq!(
        f.run_from(&Packet::icmp_echo(A, WORLD_IP, ECHO_REPLY, 0x4321)),
        TC_ACT_SHOT
    );
    // UDP too.
    assert_eq!(
        f.to_container(&Packet::udp(WORLD_IP, 5353, A, 53)),
        TC_ACT_OK
    );
    assert_eq!(f.run_from(&Packet::udp(A, 53, WORLD_IP, 5353)), TC_ACT_OK);
    let (ct, _) = f.dp.tracked();
    assert_eq!(ct, 3, "one entry per allowed flow");

    // An explicit deny still wins over a reply.
    f.policy(
        &[
            enforced(ID_A, DIRECTION_EGRESS),
            deny(
                key(ID_A, identity::WORLD, PROTO_ANY, ANY_PORT, DIRECTION_EGRESS),
                3,
            ),
        ],
        &[],
    );
    assert_eq!(
        f.to_container(&Packet::tcp(WORLD_IP, 40000, A, 80, SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        f.run_from(&Packet::tcp(A, 80, WORLD_IP, 40000, SYN | ACK)),
        TC_ACT_SHOT
    );
}

#[test]
fn events_for_drops_always_and_new_flows_when_asked() {
    let mut f = Fixture::new();
    let _ = f.dp.drain_events();
    // Forwarded events off: nothing for forwarded packets.
    assert_eq!(
        f.run_from(&Packet::tcp(A, 1000, B, 80, SYN)),
        TC_ACT_REDIRECT
    );
    assert_eq!(f.dp.drain_events(), Vec::new());
    let mut config = f.dp.config().expect("config");
    config.flags |= FLAG_EVENTS_FORWARDED;
    f.dp.set_config(config).expect("config");
    f.dp.flush_conntrack();
    // A SYN is a new flow; the ACK after it is not. The first UDP packet is, the second not.
    for pkt in [
        Packet::tcp(A, 1000, B, 80, SYN),
        Packet::tcp(A, 1000, B, 80, ACK),
        Packet::udp(A, 1000, C, 53),
        Packet::udp(A, 1000, C, 53),
    ] {
        assert_eq!(f.run_from(&pkt), TC_ACT_REDIRECT);
    }
    let events: Vec<VerdictEvent> = f.dp.drain_events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.verdict == VERDICT_FORWARDED && e.reason == reason::FORWARDED_LOCAL)
    );
    assert_eq!((events[0].protocol, events[0].dport), (TCP, 80));
    assert_eq!((events[1].protocol, events[1].daddr), (UDP, wire(C)));
    assert!(events[0].ifindex == LO && events[0].len > 0);
}

#[test]
fn published_port_dnat_and_reverse_nat_keep_checksums_valid() {
    let mut f = Fixture::new();
    f.dp.set_ports(&[
        (
            PortKey {
                port: 8080,
                protocol: TCP,
                _pad: 0,
            },
            PortTarget {
                ip: wire(A),
                port: 80,
                _pad: 0,
            },
        ),
        (
            PortKey {
                port: 5353,
                protocol: UDP,
                _pad: 0,
            },
            PortTarget {
                ip: wire(A),
                port: 53,
                _pad: 0,
            },
        ),
    ])
    .expect("ports");

    // Client → node:8080 becomes client → A:80.
    let (action, out) = f.run(
        ProgramKind::NodeIngress,
        &Packet::tcp(CLIENT, 41000, NODE, 8080, SYN).build(),
    );
    assert_eq!(action, TC_ACT_OK);
    assert_eq!((packet::daddr(&out), packet::dport(&out)), (A, 80));
    assert_eq!((packet::saddr(&out), packet::sport(&out)), (CLIENT, 41000));
    assert!(packet::ip_checksum_ok(&out), "IP checksum after DNAT");
    assert!(packet::l4_checksum_ok(&out), "TCP checksum after DNAT");
    let (action, out) = f.run(
        ProgramKind::NodeIngress,
        &Packet::udp(CLIENT, 41001, NODE, 5353).build(),
    );
    assert_eq!(action, TC_ACT_OK);
    assert_eq!((packet::daddr(&out), packet::dport(&out)), (A, 53));
    assert!(
        packet::ip_checksum_ok(&out) && packet::l4_checksum_ok(&out),
        "UDP after DNAT"
    );
    assert_eq!(f.count(reason::FORWARDED_PORT_MAP), 2);
    assert_eq!(f.dp.tracked().1, 2, "two reverse translations");

    // Unpublished ports, other addresses, other protocols: untouched.
    for pkt in [
        Packet::tcp(CLIENT, 41000, NODE, 8081, SYN),
        Packet::tcp(CLIENT, 41000, WORLD_IP, 8080, SYN),
        Packet::udp(CLIENT, 41000, NODE, 8080),
        Packet::icmp_echo(CLIENT, NODE, ECHO_REQUEST, 1),
    ] {
        let bytes = pkt.build();
        let (action, out) = f.run(ProgramKind::NodeIngress, &bytes);
        assert_eq!((action, out), (TC_ACT_OK, bytes));
    }

    // A's reply leaves with the node's address and the published port.
    let (action, out) = f.run(
        ProgramKind::FromContainer,
        &Packet::tcp(A, 80, CLIENT, 41000, SYN | ACK).build(),
    );
    assert!(
        action == TC_ACT_OK || action == TC_ACT_REDIRECT,
        "action {action}"
    );
    assert_eq!((packet::saddr(&out), packet::sport(&out)), (NODE, 8080));
    assert_eq!((packet::daddr(&out), packet::dport(&out)), (CLIENT, 41000));
    assert!(
        packet::ip_checksum_ok(&out),
        "IP checksum after reverse NAT"
    );
    assert!(
        packet::l4_checksum_ok(&out),
        "TCP checksum after reverse NAT"
    );
    let (_, out) = f.run(
        ProgramKind::FromContainer,
        &Packet::udp(A, 53, CLIENT, 41001).build(),
    );
    assert_eq!((packet::saddr(&out), packet::sport(&out)), (NODE, 5353));
    assert!(
        packet::ip_checksum_ok(&out) && packet::l4_checksum_ok(&out),
        "UDP after reverse NAT"
    );
    assert_eq!(f.count(reason::FORWARDED_PORT_MAP), 4);

    // Dropping the mapping stops the DNAT.
    f.dp.set_ports(&[]).expect("ports");
    let bytes = Packet::tcp(CLIENT, 41000, NODE, 8080, SYN).build();
    assert_eq!(f.run(ProgramKind::NodeIngress, &bytes).1, bytes);
}

#[test]
fn underlay_xdp_passes_and_counts() {
    let f = Fixture::new();
    let bytes = Packet::udp(CLIENT, 4789, NODE, 4789).build();
    let (action, out) = f.run(ProgramKind::Underlay, &bytes);
    assert_eq!((action, out), (XDP_PASS, bytes));
    assert_eq!(f.count(reason::PASS_TO_HOST), 1);
}

/// Policy cost against rule count (printed, not asserted: timing belongs to `xtask bench`), and
/// the bulk load staying fast and atomic.
#[test]
fn policy_scales_to_100k_rules() {
    let mut f = Fixture::new();
    // Through hm_to_container (ingress policy of B, peer A): it does not rewrite the packet, so
    // repeated runs see the same bytes (hm_from_container would count the TTL down).
    let pkt = Packet::tcp(A, 1000, B, 80, SYN).build();
    for rules in [10u32, 1_000, 10_000, 100_000] {
        // B ingress enforced; every rule allows some other app; the last allows A:80.
        let mut entries: Vec<(PolicyKey, u32, u32)> = (0..rules - 1)
            .map(|i| {
                allow(
                    key(
                        ID_B,
                        identity::FIRST_APP + 1000 + i,
                        TCP,
                        80,
                        DIRECTION_INGRESS,
                    ),
                    1,
                )
            })
            .collect();
        entries.push(enforced(ID_B, DIRECTION_INGRESS));
        entries.push(allow(key(ID_B, ID_A, TCP, 80, DIRECTION_INGRESS), 2));
        // As many /32 CIDR identities, none of them matching the test's addresses.
        let cidrs: Vec<(String, u32)> = (0..rules.min(60_000))
            .map(|i| {
                (
                    format!("100.{}.{}.{}/32", i >> 16, (i >> 8) & 0xff, i & 0xff),
                    ID_CIDR + 1 + i,
                )
            })
            .collect();
        let cidrs: Vec<(&str, u32)> = cidrs.iter().map(|(n, id)| (n.as_str(), *id)).collect();
        let start = Instant::now();
        f.policy(&entries, &cidrs);
        let load = start.elapsed();
        let run =
            f.dp.test_run(ProgramKind::ToContainer, &pkt, 20_000)
                .expect("test run");
        assert_eq!(run.action, TC_ACT_OK);
        let denied = Packet::tcp(A, 1000, B, 81, SYN).build();
        assert_eq!(f.run(ProgramKind::ToContainer, &denied).0, TC_ACT_SHOT);
        eprintln!(
            "policy: {rules:>6} rules and {:>5} CIDRs loaded in {:>7.1} ms; hm_to_container {:>4} ns/packet",
            cidrs.len(),
            load.as_secs_f64() * 1e3,
            run.duration.as_nanos()
        );
        assert!(load.as_secs() < 5, "loading {rules} rules took {load:?}");
    }
}

/// An upgrade that changes a map's layout: the stale pin (here `HM_COUNTERS` of an older
/// version, 13 reasons) is replaced instead of failing the start.
#[test]
fn incompatible_pinned_maps_are_replaced_on_load() {
    let pins = PinDir::new("upgrade");
    std::fs::create_dir_all(&pins.0).expect("pin dir");
    hivemind_tests::util::check(
        std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(pins.0.join("HM_COUNTERS"))
            .args([
                "type",
                "percpu_array",
                "key",
                "4",
                "value",
                "16",
                "entries",
                "13",
            ])
            .args(["name", "HM_COUNTERS"]),
    );
    let dp = Dataplane::load(&pins.0).expect("load over an old pin");
    let guard = Fixture { dp, _pins: pins };
    let counters = guard.dp.counters().expect("counters over the new map");
    assert_eq!(counters.len(), reason::COUNT as usize);
    let pkt = Packet::udp(CLIENT, 1, NODE, 2).build();
    assert_eq!(guard.run(ProgramKind::Underlay, &pkt).0, XDP_PASS);
    assert_eq!(guard.count(reason::PASS_TO_HOST), 1);
}
