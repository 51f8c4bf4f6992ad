//! The overlay's programs under `BPF_PROG_TEST_RUN`: encapsulation in `hm_from_container` and
//! (for the node's own traffic) `hm_from_host`, decapsulation and ingress policy in
//! `hm_node_ingress`, the XDP member filter `hm_underlay`,
//! and what each does with malformed or foreign packets.
//!
//! Each test runs in its own network namespace (the FIB lookup of the encapsulation needs a
//! known underlay: `ul0` 192.168.100.11/24 with permanent neighbours for the peers) and loads
//! its own dataplane into its own pin directory. Test-run skbs arrive on that namespace's
//! loopback device (ifindex 1), so the sending container is the endpoint bound to ifindex 1.

use std::{net::Ipv4Addr, path::PathBuf};

use hivemind_agent::net::{
    dataplane::{Dataplane, ProgramKind},
    netns::NetnsGuard,
};
use hivemind_common::{
    config::Config,
    endpoint::{Endpoint, FLAG_LOCAL},
    event::VERDICT_DROPPED,
    identity,
    overlay::{DEFAULT_VXLAN_PORT, Peer, SPORT_BASE, SPORT_MASK},
    policy::{
        ACTION_ALLOW, ACTION_DENY, ANY_PORT, DIRECTION_EGRESS, DIRECTION_INGRESS, ENFORCED_PORT,
        PROTO_ANY, PolicyKey, PolicyValue,
    },
    reason,
};
use hivemind_tests::{
    Netns,
    packet::{self, ACK, ETH_HLEN, Packet, SYN, TCP, UDP, outer},
    util::unique,
};

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;

/// This node and its peers on the underlay.
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 11);
const PEER_B: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 12);
const PEER_C: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 13);
/// Has a neighbour entry but is not a member.
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 66);
const PEER_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const PEER_C_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];
const VTEP_B: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x0b];

/// Local container A (on lo, the test-run sender), remote container R on node B, and
/// node C's subnet, known only as a tunnel.
const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const R: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const C_SUBNET: &str = "10.244.3.0/24";
const C_HOST: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 9);
const OWN_SUBNET: &str = "10.244.1.0/24";
const WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

const ID_A: u32 = identity::FIRST_APP;
const ID_R: u32 = identity::FIRST_APP + 1;
const ID_X: u32 = identity::FIRST_APP + 2;
const LO: u32 = 1;

fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

const A_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 0x02];
const A_GW_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 0x82];

/// A namespace with an underlay, a dataplane in its own pin directory, and the endpoints,
/// peers and tunnels above. Field order is drop order: the dataplane, its pins, then this
/// thread leaves the namespace, then the namespace goes.
struct Fixture {
    dp: Dataplane,
    pins: PathBuf,
    ul0_mac: [u8; 6],
    _inside: NetnsGuard,
    _netns: Netns,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

impl Fixture {
    fn new() -> Self {
        let netns = Netns::new("hmop");
        netns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
        netns.ip(&["addr", "add", "192.168.100.11/24", "dev", "ul0"]);
        netns.ip(&["link", "set", "ul0", "up"]);
        netns.ip(&["link", "set", "ul1", "up"]);
        for (ip, mac) in [
            (PEER_B, "02:00:00:00:00:12"),
            (PEER_C, "02:00:00:00:00:13"),
            (STRANGER, "02:00:00:00:00:66"),
        ] {
            netns.ip(&[
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                mac,
                "dev",
                "ul0",
                "nud",
                "permanent",
            ]);
        }
        netns.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
        let ul0_mac = parse_mac(
            netns
                .ip(&["-br", "link", "show", "ul0"])
                .split_whitespace()
                .nth(2)
                .expect("ip -br link: name state MAC"),
        );
        let inside =
            NetnsGuard::enter(std::path::Path::new(&netns.path())).expect("enter the namespace");
        let pins = PathBuf::from("/sys/fs/bpf/hivemind").join(unique("ovlprogs"));
        let mut dp = Dataplane::load(&pins).expect("load the dataplane");
        dp.upsert_endpoint(
            A,
            Endpoint {
                ifindex: LO,
                identity: ID_A,
                flags: FLAG_LOCAL,
                mac: A_MAC,
                gw_mac: A_GW_MAC,
                ..Endpoint::default()
            },
        )
        .expect("endpoint A");
        dp.upsert_remote_endpoint(R, ID_R, PEER_B)
            .expect("remote endpoint R");
        dp.set_peers(&[
            (
                PEER_B,
                Peer {
                    vtep_mac: VTEP_B,
                    ..Peer::default()
                },
            ),
            (PEER_C, Peer::default()),
        ])
        .expect("peers");
        dp.set_tunnels(&[
            (C_SUBNET.parse().expect("subnet"), PEER_C),
            ("10.244.2.0/24".parse().expect("subnet"), PEER_B),
            // Our own subnet may be in the list the agent syncs: it must never be tunnelled.
            (OWN_SUBNET.parse().expect("subnet"), NODE),
        ])
        .expect("tunnels");
        dp.set_config(Config {
            node_ip: wire(NODE),
            gateway_ip: wire(GATEWAY),
            ..Config::default()
        })
        .expect("config");
        Self {
            dp,
            pins,
            ul0_mac,
            _inside: inside,
            _netns: netns,
        }
    }

    fn run(&self, kind: ProgramKind, pkt: &[u8]) -> (i32, Vec<u8>) {
        let out = self.dp.test_run(kind, pkt, 1).expect("test run");
        (out.action, out.packet)
    }

    fn count(&self, wanted: u32) -> u64 {
        self.dp
            .counters()
            .expect("counters")
            .into_iter()
            .find(|c| c.reason == wanted)
            .map_or(0, |c| c.packets)
    }

    fn policy(&mut self, rules: &[(PolicyKey, u32, u32)]) {
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
        self.dp
            .replace_policy(&entries, &[])
            .expect("replace policy");
        self.dp.flush_conntrack();
    }

    fn peer(&self, ip: Ipv4Addr) -> hivemind_agent::net::dataplane::PeerStat {
        self.dp
            .peer_stats()
            .expect("peer stats")
            .into_iter()
            .find(|s| s.node_ip == ip)
            .expect("stats for the peer")
    }
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("6 bytes")
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

fn enforced(identity: u32, direction: u8, policy_id: u32) -> (PolicyKey, u32, u32) {
    (
        key(identity, identity::ANY, PROTO_ANY, ENFORCED_PORT, direction),
        ACTION_DENY,
        policy_id,
    )
}

fn be16(pkt: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([pkt[at], pkt[at + 1]])
}

fn vni(pkt: &[u8]) -> u32 {
    u32::from_be_bytes([
        0,
        pkt[outer::VXLAN + 4],
        pkt[outer::VXLAN + 5],
        pkt[outer::VXLAN + 6],
    ])
}

/// The inner frame with its Ethernet header swapped for a zero one, to compare bytes.
fn without_macs(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[..12].fill(0);
    out
}

/// Checks the outer headers of an encapsulated packet; returns the inner frame.
fn check_outer(pkt: &[u8], f: &Fixture, to: Ipv4Addr, to_mac: [u8; 6], port: u16) -> Vec<u8> {
    assert_eq!(
        packet::dst_mac(pkt),
        to_mac,
        "outer destination MAC from the FIB"
    );
    assert_eq!(
        packet::src_mac(pkt),
        f.ul0_mac,
        "outer source MAC: the underlay's"
    );
    assert_eq!(be16(pkt, 12), 0x0800);
    let ip = &pkt[outer::IP..outer::UDP];
    assert_eq!(ip[0], 0x45, "IPv4, no options");
    assert_eq!(
        usize::from(be16(ip, 2)),
        pkt.len() - ETH_HLEN,
        "total length"
    );
    assert_eq!(be16(ip, 6), 0x4000, "DF, no fragment offset");
    assert_eq!(ip[8], 64, "outer TTL");
    assert_eq!(ip[9], UDP);
    assert_eq!(packet::saddr(pkt), NODE);
    assert_eq!(packet::daddr(pkt), to);
    assert!(packet::ip_checksum_ok(pkt), "outer IP checksum");
    let sport = packet::sport(pkt);
    assert!(
        (SPORT_BASE..=SPORT_BASE | SPORT_MASK).contains(&sport),
        "source port {sport} in 49152..=65535"
    );
    assert_eq!(packet::dport(pkt), port);
    assert_eq!(
        usize::from(be16(pkt, outer::UDP + 4)),
        pkt.len() - outer::UDP,
        "UDP length"
    );
    assert_eq!(be16(pkt, outer::UDP + 6), 0, "UDP checksum 0 (none)");
    assert_eq!(pkt[outer::VXLAN], 0x08, "VXLAN flags: I");
    assert_eq!(&pkt[outer::VXLAN + 1..outer::VXLAN + 4], &[0, 0, 0]);
    assert_eq!(pkt[outer::VXLAN + 7], 0, "reserved");
    pkt[outer::INNER..].to_vec()
}

#[test]
fn overlay_encap_to_a_remote_endpoint() {
    let f = Fixture::new();
    let sent = Packet::tcp(A, 40000, R, 80, SYN);
    let bytes = sent.build();
    let (action, out) = f.run(ProgramKind::FromContainer, &bytes);
    assert_eq!(action, TC_ACT_REDIRECT, "out of the underlay");
    assert_eq!(out.len(), bytes.len() + 50, "50 bytes of headers");
    let inner = check_outer(&out, &f, PEER_B, PEER_B_MAC, DEFAULT_VXLAN_PORT);
    assert_eq!(vni(&out), ID_A, "VNI = the source's identity");
    assert_eq!(
        packet::dst_mac(&inner),
        VTEP_B,
        "inner destination: the peer's VTEP MAC"
    );
    assert_eq!(
        packet::src_mac(&inner),
        A_MAC,
        "inner source: the container"
    );
    // The inner packet is the container's, routed once: TTL down, checksums still right.
    let mut routed = sent.clone();
    routed.ttl = 63;
    assert_eq!(without_macs(&inner), without_macs(&routed.build()));
    assert!(packet::ip_checksum_ok(&inner) && packet::l4_checksum_ok(&inner));
    assert_eq!(f.count(reason::FORWARDED_OVERLAY), 1);
    let stats = f.peer(PEER_B);
    assert_eq!((stats.tx_packets, stats.rx_packets), (1, 0));
    assert_eq!(stats.tx_bytes, out.len() as u64);
    assert!(stats.last_sent.is_some() && stats.last_received.is_none());

    // The source port is a hash of the inner flow: stable per flow, spread across flows.
    let sport_of = |sport: u16| {
        let (_, out) = f.run(
            ProgramKind::FromContainer,
            &Packet::tcp(A, sport, R, 80, ACK).build(),
        );
        packet::sport(&out)
    };
    assert_eq!(sport_of(40001), sport_of(40001));
    let ports: std::collections::BTreeSet<u16> = (40001..40033).map(sport_of).collect();
    assert!(ports.len() > 16, "32 flows on {} source ports", ports.len());
}

#[test]
fn overlay_encap_to_a_tunnel_only_subnet_and_policy_peers() {
    let mut f = Fixture::new();
    // C_HOST is in node C's subnet but not (yet) an endpoint: the tunnel map finds the node.
    let sent = Packet::udp(A, 5353, C_HOST, 53);
    let (action, out) = f.run(ProgramKind::FromContainer, &sent.build());
    assert_eq!(action, TC_ACT_REDIRECT);
    let inner = check_outer(&out, &f, PEER_C, PEER_C_MAC, DEFAULT_VXLAN_PORT);
    assert_eq!(vni(&out), ID_A);
    assert_eq!(packet::dst_mac(&inner), [0; 6], "no VTEP MAC given for C");
    assert!(packet::ip_checksum_ok(&inner) && packet::l4_checksum_ok(&inner));
    assert_eq!(packet::ttl(&inner), 63);

    // Egress policy first: the peer's identity is the remote endpoint's, WORLD when the
    // address is only known as a tunnel.
    f.policy(&[
        enforced(ID_A, DIRECTION_EGRESS, 4),
        (key(ID_A, ID_R, TCP, 80, DIRECTION_EGRESS), ACTION_ALLOW, 4),
    ]);
    let _ = f.dp.drain_events();
    assert_eq!(
        f.run(
            ProgramKind::FromContainer,
            &Packet::tcp(A, 1000, R, 80, SYN).build()
        )
        .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        f.run(
            ProgramKind::FromContainer,
            &Packet::tcp(A, 1000, C_HOST, 80, SYN).build()
        )
        .0,
        TC_ACT_SHOT
    );
    let events = f.dp.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            events[0].reason,
            events[0].policy_id,
            events[0].dst_identity
        ),
        (reason::DROPPED_POLICY, 4, identity::WORLD)
    );
}

#[test]
fn overlay_encap_edge_cases() {
    let mut f = Fixture::new();
    // Our own subnet in the tunnel map: never encapsulated (an unknown local address goes to
    // the host stack).
    let own = Packet::tcp(A, 1000, Ipv4Addr::new(10, 244, 1, 77), 80, SYN).build();
    assert_eq!(
        f.run(ProgramKind::FromContainer, &own),
        (TC_ACT_OK, own.clone())
    );
    // Traffic leaving the cluster is not encapsulated either.
    let world = Packet::tcp(A, 1000, WORLD_IP, 80, SYN).build();
    assert_eq!(f.run(ProgramKind::FromContainer, &world).0, TC_ACT_OK);
    // TTL 1: the host stack answers with time exceeded.
    let mut dying = Packet::tcp(A, 1000, R, 80, SYN);
    dying.ttl = 1;
    assert_eq!(
        f.run(ProgramKind::FromContainer, &dying.build()).0,
        TC_ACT_OK
    );
    // A node that is not (or no longer) a member is not sent to.
    f.dp.set_peers(&[(PEER_C, Peer::default())]).expect("peers");
    assert_eq!(
        f.run(
            ProgramKind::FromContainer,
            &Packet::tcp(A, 1000, R, 80, SYN).build()
        )
        .0,
        TC_ACT_SHOT
    );
    assert_eq!(f.count(reason::DROPPED_NO_ROUTE), 1);
    assert!(
        f.dp.peer_stats()
            .expect("stats")
            .iter()
            .all(|s| s.node_ip != PEER_B),
        "a removed peer's statistics go with it"
    );
    // Another VXLAN port.
    let mut config = f.dp.config().expect("config");
    config.vxlan_port = 8472;
    f.dp.set_config(config).expect("config");
    let (action, out) = f.run(
        ProgramKind::FromContainer,
        &Packet::udp(A, 1, C_HOST, 2).build(),
    );
    assert_eq!(action, TC_ACT_REDIRECT);
    check_outer(&out, &f, PEER_C, PEER_C_MAC, 8472);
    // No route to the peer on the underlay.
    f.dp.set_tunnels(&[(
        C_SUBNET.parse().expect("subnet"),
        Ipv4Addr::new(172, 31, 0, 1),
    )])
    .expect("tunnels");
    f.dp.set_peers(&[(Ipv4Addr::new(172, 31, 0, 1), Peer::default())])
        .expect("peers");
    assert_eq!(
        f.run(
            ProgramKind::FromContainer,
            &Packet::udp(A, 1, C_HOST, 2).build()
        )
        .0,
        TC_ACT_SHOT
    );
    assert_eq!(f.count(reason::DROPPED_NO_ROUTE), 2);
    // A frame that would not fit the underlay's MTU once wrapped (the container's MTU is not
    // the underlay's minus 50).
    f.dp.set_tunnels(&[(C_SUBNET.parse().expect("subnet"), PEER_C)])
        .expect("tunnels");
    f.dp.set_peers(&[(PEER_C, Peer::default())]).expect("peers");
    let big = Packet::udp_with(A, 1, C_HOST, 2, &[0u8; 1472]).build();
    assert_eq!(big.len(), 1514);
    assert_eq!(f.run(ProgramKind::FromContainer, &big).0, TC_ACT_SHOT);
    assert_eq!(f.count(reason::DROPPED_TOO_BIG), 1);
    let fits = Packet::udp_with(A, 1, C_HOST, 2, &[0u8; 1422]).build();
    assert_eq!(f.run(ProgramKind::FromContainer, &fits).0, TC_ACT_REDIRECT);
}

/// The frame node B sends for R → A (VNI `vni`).
fn from_b(inner: &Packet, vni: u32) -> Vec<u8> {
    packet::vxlan(PEER_B, NODE, DEFAULT_VXLAN_PORT, 0x08, vni, &inner.build())
}

const HOST_MAC: [u8; 6] = [0x02, 0x68, 0x6d, 0, 0, 0x01];

#[test]
fn overlay_carries_the_nodes_own_traffic_and_its_answers() {
    let mut f = Fixture::new();
    // Before the node is on the overlay (no `hivemind0` in the config), an answer to the
    // gateway address has nowhere to go.
    let answer = from_b(&Packet::tcp(R, 80, GATEWAY, 40000, SYN | ACK), ID_R);
    assert_eq!(f.run(ProgramKind::NodeIngress, &answer).0, TC_ACT_SHOT);
    assert_eq!(f.count(reason::DROPPED_NO_ROUTE), 1);

    f.dp.set_config(Config {
        node_ip: wire(NODE),
        gateway_ip: wire(GATEWAY),
        host_ifindex: LO,
        host_mac: HOST_MAC,
        ..Config::default()
    })
    .expect("config");

    // The node's own packet (source: the gateway address) to a remote container: VXLAN to its
    // node, VNI = HOST, inner packet untouched (the node originates it; nothing is routed).
    let sent = Packet::tcp(GATEWAY, 40000, R, 80, SYN);
    let (action, out) = f.run(ProgramKind::FromHost, &sent.build());
    assert_eq!(action, TC_ACT_REDIRECT, "out of the underlay");
    let inner = check_outer(&out, &f, PEER_B, PEER_B_MAC, DEFAULT_VXLAN_PORT);
    assert_eq!(vni(&out), identity::HOST, "VNI = the node itself");
    assert_eq!(packet::src_mac(&inner), HOST_MAC);
    assert_eq!(packet::dst_mac(&inner), VTEP_B);
    assert_eq!(without_macs(&inner), without_macs(&sent.build()));
    assert_eq!(f.count(reason::FORWARDED_OVERLAY), 1);
    assert_eq!(f.peer(PEER_B).tx_packets, 1);
    // A subnet known only as a tunnel works the same.
    let (action, out) = f.run(
        ProgramKind::FromHost,
        &Packet::udp(GATEWAY, 5000, C_HOST, 53).build(),
    );
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(packet::daddr(&out), PEER_C);

    // Not the node's own (another source: traffic the node would forward), or no other node
    // to send it to: dropped, never carried under the node's identity.
    for (what, pkt) in [
        (
            "forwarded from elsewhere",
            Packet::tcp(WORLD_IP, 1, R, 80, SYN),
        ),
        (
            "the node's underlay address as source",
            Packet::tcp(NODE, 1, R, 80, SYN),
        ),
        (
            "an unused address of this node's own subnet",
            Packet::tcp(GATEWAY, 1, Ipv4Addr::new(10, 244, 1, 99), 80, SYN),
        ),
        (
            "outside the cluster",
            Packet::tcp(GATEWAY, 1, WORLD_IP, 80, SYN),
        ),
    ] {
        let before = f.count(reason::DROPPED_NO_ROUTE);
        assert_eq!(
            f.run(ProgramKind::FromHost, &pkt.build()).0,
            TC_ACT_SHOT,
            "{what}"
        );
        assert_eq!(f.count(reason::DROPPED_NO_ROUTE), before + 1, "{what}");
    }

    // The answer from the remote container comes back to the gateway address: stripped and
    // handed to `hivemind0`'s ingress with its MAC, so the node's stack takes it as its own.
    let (action, out) = f.run(ProgramKind::NodeIngress, &answer);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(packet::dst_mac(&out), HOST_MAC);
    assert_eq!(
        without_macs(&out),
        without_macs(&Packet::tcp(R, 80, GATEWAY, 40000, SYN | ACK).build())
    );
    assert_eq!(f.count(reason::RECEIVED_OVERLAY), 1);
    // The node has no policy of its own: any member's packet to the gateway address is
    // delivered, even with a policy that selects every app.
    f.policy(&[enforced(ID_A, DIRECTION_INGRESS, 3)]);
    let opened = from_b(&Packet::udp(R, 5000, GATEWAY, 53), ID_R);
    assert_eq!(f.run(ProgramKind::NodeIngress, &opened).0, TC_ACT_REDIRECT);
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn overlay_decap_and_ingress_policy_by_vni() {
    let mut f = Fixture::new();
    let inner = Packet::tcp(R, 40000, A, 80, SYN);
    let wrapped = from_b(&inner, ID_R);
    let (action, out) = f.run(ProgramKind::NodeIngress, &wrapped);
    assert_eq!(action, TC_ACT_REDIRECT, "into the container");
    assert_eq!(out.len(), wrapped.len() - 50);
    assert_eq!(packet::dst_mac(&out), A_MAC, "A's eth0");
    assert_eq!(packet::src_mac(&out), A_GW_MAC, "A's host veth");
    assert_eq!(
        without_macs(&out),
        without_macs(&inner.build()),
        "inner packet intact (TTL was taken on the sending node)"
    );
    assert!(packet::ip_checksum_ok(&out) && packet::l4_checksum_ok(&out));
    assert_eq!(f.count(reason::RECEIVED_OVERLAY), 1);
    let stats = f.peer(PEER_B);
    assert_eq!(
        (stats.rx_packets, stats.rx_bytes),
        (1, wrapped.len() as u64)
    );
    assert!(stats.last_received.is_some());

    // A's ingress allows R's app on TCP 80 only (policy 7): the VNI is the source identity,
    // whatever the inner source address.
    f.policy(&[
        enforced(ID_A, DIRECTION_INGRESS, 7),
        (key(ID_A, ID_R, TCP, 80, DIRECTION_INGRESS), ACTION_ALLOW, 7),
    ]);
    let _ = f.dp.drain_events();
    assert_eq!(f.run(ProgramKind::NodeIngress, &wrapped).0, TC_ACT_REDIRECT);
    let other_app = from_b(&Packet::tcp(R, 40001, A, 80, SYN), ID_X);
    assert_eq!(f.run(ProgramKind::NodeIngress, &other_app).0, TC_ACT_SHOT);
    let other_port = from_b(&Packet::tcp(R, 40002, A, 81, SYN), ID_R);
    assert_eq!(f.run(ProgramKind::NodeIngress, &other_port).0, TC_ACT_SHOT);
    let events = f.dp.drain_events();
    assert_eq!(events.len(), 2, "{events:?}");
    let e = events[0];
    assert_eq!(
        (e.verdict, e.reason, e.direction, e.policy_id),
        (
            VERDICT_DROPPED,
            reason::DROPPED_POLICY,
            DIRECTION_INGRESS,
            7
        )
    );
    assert_eq!((e.src_identity, e.dst_identity), (ID_X, ID_A));
    assert_eq!(
        (e.saddr, e.daddr, e.dport, e.protocol),
        (wire(R), wire(A), 80, TCP),
        "the event names the inner flow"
    );

    // An explicit deny of the app (policy 9) beats the allow.
    f.policy(&[
        (
            key(ID_A, ID_R, PROTO_ANY, ANY_PORT, DIRECTION_INGRESS),
            ACTION_ALLOW,
            8,
        ),
        (key(ID_A, ID_R, TCP, 80, DIRECTION_INGRESS), ACTION_DENY, 9),
    ]);
    assert_eq!(f.run(ProgramKind::NodeIngress, &wrapped).0, TC_ACT_SHOT);
    assert_eq!(
        f.run(
            ProgramKind::NodeIngress,
            &from_b(&Packet::udp(R, 1, A, 53), ID_R)
        )
        .0,
        TC_ACT_REDIRECT
    );
    // VNI 0 says nothing about the sender: WORLD.
    f.policy(&[
        enforced(ID_A, DIRECTION_INGRESS, 10),
        (
            key(ID_A, identity::WORLD, UDP, 53, DIRECTION_INGRESS),
            ACTION_ALLOW,
            10,
        ),
    ]);
    assert_eq!(
        f.run(
            ProgramKind::NodeIngress,
            &from_b(&Packet::udp(R, 1, A, 53), 0)
        )
        .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        f.run(
            ProgramKind::NodeIngress,
            &from_b(&Packet::udp(R, 1, A, 53), ID_R)
        )
        .0,
        TC_ACT_SHOT
    );

    // Conntrack across nodes. The receiving side: R → A allowed (ingress open) is recorded, so
    // A's replies pass A's default-deny egress, and nothing else does.
    f.policy(&[enforced(ID_A, DIRECTION_EGRESS, 11)]);
    assert_eq!(
        f.run(
            ProgramKind::FromContainer,
            &Packet::tcp(A, 80, R, 40000, SYN | ACK).build()
        )
        .0,
        TC_ACT_SHOT,
        "no flow yet"
    );
    assert_eq!(f.run(ProgramKind::NodeIngress, &wrapped).0, TC_ACT_REDIRECT);
    let (action, out) = f.run(
        ProgramKind::FromContainer,
        &Packet::tcp(A, 80, R, 40000, SYN | ACK).build(),
    );
    assert_eq!(
        action, TC_ACT_REDIRECT,
        "the reply goes back through the overlay"
    );
    assert_eq!(packet::daddr(&out), PEER_B);
    assert_eq!(
        f.run(
            ProgramKind::FromContainer,
            &Packet::tcp(A, 80, R, 40009, ACK).build()
        )
        .0,
        TC_ACT_SHOT
    );
    // The sending side: A → R allowed by A's egress is recorded, so R's replies pass A's
    // default-deny ingress.
    f.policy(&[enforced(ID_A, DIRECTION_INGRESS, 12)]);
    assert_eq!(
        f.run(
            ProgramKind::FromContainer,
            &Packet::tcp(A, 41000, R, 443, SYN).build()
        )
        .0,
        TC_ACT_REDIRECT
    );
    let reply = from_b(&Packet::tcp(R, 443, A, 41000, SYN | ACK), ID_R);
    assert_eq!(f.run(ProgramKind::NodeIngress, &reply).0, TC_ACT_REDIRECT);
    let unrelated = from_b(&Packet::tcp(R, 443, A, 41001, SYN | ACK), ID_R);
    assert_eq!(f.run(ProgramKind::NodeIngress, &unrelated).0, TC_ACT_SHOT);
}

#[test]
fn overlay_malformed_and_foreign_packets_get_defined_verdicts() {
    let f = Fixture::new();
    let inner = Packet::tcp(R, 40000, A, 80, SYN).build();
    let good = packet::vxlan(PEER_B, NODE, DEFAULT_VXLAN_PORT, 0x08, ID_R, &inner);
    let drop_as = |name: &str, pkt: &[u8], why: u32| {
        let before = f.count(why);
        let (action, _) = f.run(ProgramKind::NodeIngress, pkt);
        assert_eq!(action, TC_ACT_SHOT, "{name}");
        assert_eq!(
            f.count(why),
            before + 1,
            "{name} counted as {}",
            reason::label(why)
        );
    };
    // Truncated: a VXLAN header but no inner frame; half a VXLAN header; an inner frame whose
    // IPv4 header is cut.
    drop_as(
        "no inner frame",
        &packet::vxlan(PEER_B, NODE, DEFAULT_VXLAN_PORT, 0x08, ID_R, &[]),
        reason::DROPPED_MALFORMED,
    );
    drop_as(
        "half a VXLAN header",
        &Packet::udp_with(PEER_B, 1, NODE, DEFAULT_VXLAN_PORT, &[0x08, 0, 0, 0]).build(),
        reason::DROPPED_MALFORMED,
    );
    drop_as(
        "inner IPv4 cut",
        &packet::vxlan(
            PEER_B,
            NODE,
            DEFAULT_VXLAN_PORT,
            0x08,
            ID_R,
            &inner[..ETH_HLEN + 24],
        ),
        reason::DROPPED_MALFORMED,
    );
    // The I flag clear: no valid VNI.
    drop_as(
        "I flag clear",
        &packet::vxlan(PEER_B, NODE, DEFAULT_VXLAN_PORT, 0x00, ID_R, &inner),
        reason::DROPPED_MALFORMED,
    );
    // An inner frame that is not IPv4 (the overlay carries IPv4 only).
    drop_as(
        "inner ARP",
        &packet::vxlan(PEER_B, NODE, DEFAULT_VXLAN_PORT, 0x08, ID_R, &packet::arp()),
        reason::DROPPED_MALFORMED,
    );
    // From a source that is not a member (when XDP is not there to drop it first).
    drop_as(
        "non-member",
        &packet::vxlan(STRANGER, NODE, DEFAULT_VXLAN_PORT, 0x08, ID_R, &inner),
        reason::DROPPED_NOT_MEMBER,
    );
    // For a container that is not here.
    drop_as(
        "unknown inner destination",
        &packet::vxlan(
            PEER_B,
            NODE,
            DEFAULT_VXLAN_PORT,
            0x08,
            ID_R,
            &Packet::tcp(R, 1, Ipv4Addr::new(10, 244, 1, 99), 80, SYN).build(),
        ),
        reason::DROPPED_NO_ROUTE,
    );
    // Reserved flag bits are ignored (RFC 7348): delivered.
    let reserved = packet::vxlan(PEER_B, NODE, DEFAULT_VXLAN_PORT, 0x08 | 0x80, ID_R, &inner);
    assert_eq!(
        f.run(ProgramKind::NodeIngress, &reserved).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(f.run(ProgramKind::NodeIngress, &good).0, TC_ACT_REDIRECT);

    // Not VXLAN for us: another port, another address, later fragments, other protocols,
    // ARP. Passed on untouched.
    let mut fragment = Packet::udp_with(PEER_B, 1, NODE, DEFAULT_VXLAN_PORT, &good[outer::VXLAN..]);
    fragment.frag = 185;
    for (name, pkt) in [
        (
            "other port",
            packet::vxlan(PEER_B, NODE, 4790, 0x08, ID_R, &inner),
        ),
        (
            "other address",
            packet::vxlan(
                PEER_B,
                Ipv4Addr::new(192, 168, 100, 99),
                DEFAULT_VXLAN_PORT,
                0x08,
                ID_R,
                &inner,
            ),
        ),
        ("later fragment", fragment.build()),
        ("TCP", Packet::tcp(PEER_B, 4789, NODE, 4789, SYN).build()),
        ("ARP", packet::arp()),
    ] {
        let (action, out) = f.run(ProgramKind::NodeIngress, &pkt);
        assert_eq!((action, &out), (TC_ACT_OK, &pkt), "{name} untouched");
    }
}

#[test]
fn overlay_xdp_drops_vxlan_from_non_members_only() {
    let mut f = Fixture::new();
    let inner = Packet::tcp(R, 40000, A, 80, SYN).build();
    let _ = f.dp.drain_events();
    // A non-member's VXLAN: dropped, counted, reported.
    let spoofed = packet::vxlan(STRANGER, NODE, DEFAULT_VXLAN_PORT, 0x08, ID_R, &inner);
    assert_eq!(f.run(ProgramKind::Underlay, &spoofed).0, XDP_DROP);
    assert_eq!(f.count(reason::DROPPED_NOT_MEMBER), 1);
    let events = f.dp.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!(
        (e.verdict, e.reason, e.saddr, e.daddr, e.dport, e.protocol),
        (
            VERDICT_DROPPED,
            reason::DROPPED_NOT_MEMBER,
            wire(STRANGER),
            wire(NODE),
            DEFAULT_VXLAN_PORT,
            UDP
        )
    );
    assert_eq!(e.len as usize, spoofed.len());
    // Everything else passes, untouched and uncounted (the TC program decides on it).
    let mut options = Packet::udp_with(STRANGER, 1, NODE, DEFAULT_VXLAN_PORT, &[0x08; 30]);
    options.options = vec![1, 1, 1, 1];
    let mut later = Packet::udp_with(STRANGER, 1, NODE, DEFAULT_VXLAN_PORT, &[0; 30]);
    later.frag = 100;
    for (name, pkt) in [
        (
            "member",
            packet::vxlan(PEER_B, NODE, DEFAULT_VXLAN_PORT, 0x08, ID_R, &inner),
        ),
        (
            "other UDP port",
            packet::vxlan(STRANGER, NODE, 4790, 0x08, ID_R, &inner),
        ),
        ("TCP", Packet::tcp(STRANGER, 4789, NODE, 4789, SYN).build()),
        ("ARP", packet::arp()),
        ("later fragment", later.build()),
        ("truncated UDP", {
            let full = Packet::udp(STRANGER, 1, NODE, DEFAULT_VXLAN_PORT).build();
            full[..ETH_HLEN + 20 + 4].to_vec()
        }),
    ] {
        let (action, out) = f.run(ProgramKind::Underlay, &pkt);
        assert_eq!((action, &out), (XDP_PASS, &pkt), "{name}");
    }
    // IP options move the UDP header: still found.
    assert_eq!(f.run(ProgramKind::Underlay, &options.build()).0, XDP_DROP);
    assert_eq!(f.count(reason::DROPPED_NOT_MEMBER), 2);
    // The configured port is the one filtered.
    let mut config = f.dp.config().expect("config");
    config.vxlan_port = 8472;
    f.dp.set_config(config).expect("config");
    assert_eq!(f.run(ProgramKind::Underlay, &spoofed).0, XDP_PASS);
    let other = packet::vxlan(STRANGER, NODE, 8472, 0x08, ID_R, &inner);
    assert_eq!(f.run(ProgramKind::Underlay, &other).0, XDP_DROP);
}
