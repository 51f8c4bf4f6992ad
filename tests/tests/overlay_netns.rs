//! The overlay in namespace topologies: node namespaces on an underlay (a bridge in its own
//! namespace), each running the dataplane in-process as the agent would, containers plumbed by
//! `net::link`. Test-run cannot show redirects, GSO, the FIB or a real VXLAN peer; these can.
//!
//! ```text
//!                           [underlay: br0]
//!        ┌───────────────┬──────┴────────┬───────────────┬────────────────┐
//!   node 0 .11      node 1 .12      node 2 .13      stranger .66     foreign .50
//!   10.244.1.0/24   10.244.2.0/24   10.244.3.0/24   (vxlan device,   (Linux vxlan, external,
//!                                                    not a member)    a member; 10.244.200.1)
//! ```

use std::{
    net::Ipv4Addr,
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use hivemind_agent::net::{dataplane::UnderlayXdp, link};
use hivemind_common::{
    event::VERDICT_DROPPED,
    identity,
    overlay::OVERHEAD,
    policy::{
        ACTION_ALLOW, ACTION_DENY, ANY_PORT, DIRECTION_EGRESS, DIRECTION_INGRESS, ENFORCED_PORT,
        PROTO_ANY, PolicyKey, PolicyValue,
    },
    reason,
};
use hivemind_tests::{
    Netns, Process,
    overlay::{Cluster, ClusterOptions, Container, UNDERLAY_IF, UnderlayKind, underlay_ip},
    util::wait_for,
};
use ipnet::Ipv4Net;

const WEB: u32 = identity::FIRST_APP + 1;
const API: u32 = identity::FIRST_APP + 2;
const OTHER: u32 = identity::FIRST_APP + 3;
const TCP: u8 = 6;
/// The VNI a foreign VTEP puts on what it sends.
const FOREIGN_VNI: u32 = 4242;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// busybox httpd serving `dir` on `port` in `c`, once it answers.
fn serve(c: &Container, port: u16, dir: &Path) -> Process {
    let mut command = c.netns.command("busybox");
    command
        .args(["httpd", "-f", "-p", &port.to_string(), "-h"])
        .arg(dir);
    let process = Process::spawn(
        "httpd",
        &mut command,
        &dir.join(format!("httpd-{}-{port}.log", c.name)),
    );
    let url = format!("http://127.0.0.1:{port}/");
    wait_for("httpd to listen", Duration::from_secs(10), || {
        c.run("curl", &["-sf", "-m", "1", "-o", "/dev/null", &url])
            .status
            .success()
            .then_some(())
    });
    process
}

/// Bytes `c` downloads from `url` (panics on failure).
fn fetch_size(c: &Container, url: &str) -> usize {
    let out = c.run(
        "curl",
        &[
            "-sS",
            "-m",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            url,
        ],
    );
    assert!(out.status.success(), "curl {url}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn www() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("www dir");
    std::fs::write(dir.path().join("index.html"), "hello over the overlay\n").expect("index");
    let big: Vec<u8> = (0..16 << 20)
        .map(|i: usize| u8::try_from(i % 251).expect("< 251"))
        .collect();
    std::fs::write(dir.path().join("big.bin"), big).expect("big file");
    dir
}

/// tcpdump on `netns`'s `iface`, `count` packets matching `filter`, until they are seen.
fn capture(netns: &Netns, iface: &str, filter: &str, count: u32, log: &Path) -> Process {
    let mut command = netns.command("tcpdump");
    command
        .args(["-i", iface, "-nn", "-l", "-c", &count.to_string()])
        .args(filter.split_whitespace());
    let process = Process::spawn("tcpdump", &mut command, log);
    // tcpdump says so on stderr once it listens.
    wait_for("tcpdump to listen", Duration::from_secs(10), || {
        process.log().contains("listening on").then_some(())
    });
    process
}

fn finish(mut capture: Process) -> String {
    wait_for("the capture", Duration::from_secs(15), || capture.exited());
    capture.log()
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

fn rule(key: PolicyKey, action: u32, policy_id: u32) -> (PolicyKey, PolicyValue) {
    (key, PolicyValue { action, policy_id })
}

fn enforced(identity: u32, direction: u8, policy_id: u32) -> (PolicyKey, PolicyValue) {
    rule(
        key(identity, identity::ANY, PROTO_ANY, ENFORCED_PORT, direction),
        ACTION_DENY,
        policy_id,
    )
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn overlay_three_nodes_wire_format_spoofing_and_a_plain_linux_vxlan_peer() {
    let mut cluster = Cluster::new(ClusterOptions {
        nodes: 3,
        underlay: UnderlayKind::Bridge,
        // Exercise the XDP member filter for real (native XDP on veth).
        xdp: UnderlayXdp::Native,
        ..ClusterOptions::default()
    });
    let mtu = cluster.container_mtu();
    cluster.nodes[0].add_container("web", WEB, mtu);
    cluster.nodes[1].add_container("api", API, mtu);
    cluster.nodes[2].add_container("other", OTHER, mtu);
    // Node 0 knows api and other as remote endpoints; nodes 1 and 2 know nothing of the
    // others' containers: they reach them through the tunnel map alone.
    cluster.sync_endpoints();
    let late = {
        cluster.nodes[1].add_container("late", API, mtu);
        cluster.container("late").ip
    };
    let (web, api, other) = (
        cluster.container("web"),
        cluster.container("api"),
        cluster.container("other"),
    );
    let logs = tempfile::tempdir().expect("log dir");

    // Cross-node ping, every pair, both ways; VXLAN on the wire with VNI = source identity.
    let dump = capture(
        &cluster.nodes[0].netns,
        UNDERLAY_IF,
        "udp port 4789",
        2,
        &logs.path().join("tcpdump0.log"),
    );
    assert!(web.ping(api.ip), "web → api");
    let seen = finish(dump);
    assert!(
        seen.contains(&format!("{}.", underlay_ip(0)))
            && seen.contains(&format!(
                "> {}.4789: VXLAN, flags [I] (0x08), vni {WEB}",
                underlay_ip(1)
            )),
        "request from node 0 to node 1 with web's VNI:\n{seen}"
    );
    assert!(
        seen.contains(&format!(
            "> {}.4789: VXLAN, flags [I] (0x08), vni {API}",
            underlay_ip(0)
        )),
        "reply with api's VNI:\n{seen}"
    );
    assert!(
        seen.contains(&format!("{} > {}: ICMP echo request", web.ip, api.ip))
            && seen.contains(&format!("{} > {}: ICMP echo reply", api.ip, web.ip)),
        "tcpdump decodes the inner packets:\n{seen}"
    );
    for (a, b) in [(web, other), (api, other), (other, web), (api, web)] {
        assert!(a.ping(b.ip), "{} → {}", a.name, b.name);
    }
    assert!(
        web.ping(late),
        "web → a container node 0 learnt nothing about"
    );
    assert!(other.ping(late), "tunnel map only");

    // TCP across nodes, through the XDP program (native on the underlay).
    let www = www();
    let _httpd = serve(api, 8080, www.path());
    let page = web.run(
        "curl",
        &["-sS", "-m", "5", &format!("http://{}:8080/", api.ip)],
    );
    assert_eq!(text(&page), "hello over the overlay\n");
    assert_eq!(
        fetch_size(web, &format!("http://{}:8080/big.bin", api.ip)),
        16 << 20,
        "16 MiB web ← api"
    );
    let xdp = cluster.nodes[1]
        .netns
        .ip(&["-d", "link", "show", UNDERLAY_IF]);
    assert!(
        xdp.contains("prog/xdp"),
        "native XDP on the underlay:\n{xdp}"
    );

    // A restart (or upgrade) of node 1's dataplane: traffic keeps flowing, and the pinned XDP
    // and TCX links on the underlay are switched to the fresh programs, not duplicated.
    cluster.nodes[1].restart_dataplane();
    assert!(web.ping(api.ip), "web → api after node 1's restart");
    let status = cluster.nodes[1]
        .with_dp(|dp| async move { dp.status().await })
        .expect("status");
    let underlay = status
        .programs
        .iter()
        .find(|p| p.name == "hm_underlay")
        .expect("hm_underlay");
    assert_eq!(underlay.attached, vec![format!("{UNDERLAY_IF}/xdp")]);
    let xdp = cluster.nodes[1]
        .netns
        .ip(&["-d", "link", "show", UNDERLAY_IF]);
    assert!(
        xdp.contains(&format!("prog/xdp id {} ", underlay.id)),
        "the XDP link runs the new program ({}):\n{xdp}",
        underlay.id
    );
    let ingress = status
        .programs
        .iter()
        .find(|p| p.name == "hm_node_ingress")
        .expect("hm_node_ingress");
    assert_eq!(ingress.attached, vec![format!("{UNDERLAY_IF}/ingress")]);
    let tcx = cluster.nodes[1]
        .with_dp(|dp| async move { dp.tcx_programs(UNDERLAY_IF).await })
        .expect("TCX query");
    assert_eq!(
        tcx.len(),
        1,
        "one program on the underlay's TCX hooks: {tcx:?}"
    );
    assert_eq!(tcx[0].id, ingress.id);
    for node in &cluster.nodes {
        assert_eq!(node.count(reason::DROPPED_MALFORMED), 0);
        assert_eq!(node.count(reason::DROPPED_INTERNAL), 0);
    }
    let stats = cluster.nodes[0].peer_stats();
    let to_1 = stats
        .iter()
        .find(|s| s.node_ip == underlay_ip(1))
        .expect("stats for node 1");
    assert!(to_1.rx_packets > 0 && to_1.tx_packets > 0, "{to_1:?}");
    assert!(
        to_1.rx_bytes > 16 << 20,
        "the big file came from node 1: {to_1:?}"
    );
    assert!(to_1.last_received.is_some() && to_1.last_sent.is_some());

    // A host that is not a member sends VXLAN to node 1 (a plain vxlan device aimed at it):
    // node 1's XDP drops it, counts it, reports it.
    let stranger = Netns::new("hmstr");
    let stranger_ip = Ipv4Addr::new(192, 168, 100, 66);
    cluster.attach_host(&stranger, stranger_ip);
    stranger.ip(&[
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "300",
        "remote",
        "192.168.100.12",
        "dstport",
        "4789",
        "dev",
        UNDERLAY_IF,
    ]);
    stranger.ip(&["addr", "add", "10.244.2.200/24", "dev", "vx0"]);
    stranger.ip(&["link", "set", "vx0", "up"]);
    let mut events = cluster.nodes[1].dp().subscribe_events();
    let before = cluster.nodes[1].count(reason::DROPPED_NOT_MEMBER);
    let out = stranger.run("ping", &["-c", "2", "-W", "1", &api.ip.to_string()]);
    assert!(
        !out.status.success(),
        "a non-member reached api: {}",
        text(&out)
    );
    let dropped = cluster.nodes[1].count(reason::DROPPED_NOT_MEMBER) - before;
    assert!(dropped >= 1, "non-member VXLAN counted ({dropped})");
    let event = cluster.nodes[1].runtime.run(async move {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .expect("an event within 5 s")
                .expect("event stream open");
            if event.reason == reason::DROPPED_NOT_MEMBER {
                return event;
            }
        }
    });
    assert_eq!(event.verdict, VERDICT_DROPPED);
    assert_eq!(
        (event.saddr, event.dport),
        (u32::from_ne_bytes(stranger_ip.octets()), 4789)
    );

    // Interop: a plain Linux vxlan device (external mode, lightweight-tunnel routes) on a host
    // the cluster admits as a member exchanges traffic with web.
    let foreign = Netns::new("hmfor");
    let foreign_ip = Ipv4Addr::new(192, 168, 100, 50);
    let foreign_subnet: Ipv4Net = "10.244.200.0/24".parse().expect("subnet");
    cluster.attach_host(&foreign, foreign_ip);
    foreign.ip(&[
        "link", "add", "vx0", "type", "vxlan", "external", "dstport", "4789",
    ]);
    // No ARP over the tunnel: the kernel addresses frames on vx0 to vx0's own MAC.
    foreign.ip(&[
        "link",
        "set",
        "vx0",
        "arp",
        "off",
        "mtu",
        &mtu.to_string(),
        "up",
    ]);
    foreign.ip(&["addr", "add", "10.244.200.1/32", "dev", "vx0"]);
    foreign.ip(&[
        "route",
        "add",
        "10.244.1.0/24",
        "encap",
        "ip",
        "id",
        &FOREIGN_VNI.to_string(),
        "dst",
        &underlay_ip(0).to_string(),
        "dev",
        "vx0",
    ]);
    let vx0_mac: [u8; 6] = foreign
        .ip(&["-br", "link", "show", "vx0"])
        .split_whitespace()
        .nth(2)
        .expect("MAC")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect::<Vec<_>>()
        .try_into()
        .expect("6 bytes");
    cluster.set_membership(&[(foreign_ip, vx0_mac, foreign_subnet)]);
    let dump = capture(
        &foreign,
        UNDERLAY_IF,
        "udp port 4789",
        2,
        &logs.path().join("tcpdump-foreign.log"),
    );
    let out = foreign.run("ping", &["-c", "1", "-W", "2", &web.ip.to_string()]);
    assert!(out.status.success(), "Linux VTEP → web: {}", text(&out));
    let seen = finish(dump);
    assert!(
        seen.contains(&format!("vni {FOREIGN_VNI}")) && seen.contains(&format!("vni {WEB}")),
        "the foreign VTEP's VNI one way, web's identity the other:\n{seen}"
    );
    assert!(
        web.ping(Ipv4Addr::new(10, 244, 200, 1)),
        "web → Linux VTEP (tunnel map, inner MAC = the VTEP's)"
    );
    // The foreign VTEP's traffic is judged by the identity its VNI carries.
    cluster.nodes[0].policy(vec![
        enforced(WEB, DIRECTION_INGRESS, 3),
        rule(
            key(WEB, FOREIGN_VNI, PROTO_ANY, ANY_PORT, DIRECTION_INGRESS),
            ACTION_ALLOW,
            3,
        ),
    ]);
    assert!(
        foreign
            .run("ping", &["-c", "1", "-W", "2", &web.ip.to_string()])
            .status
            .success()
    );
    assert!(!api.ping(web.ip), "api is not allowed into web any more");
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn overlay_policy_is_enforced_on_the_receiving_node() {
    let mut cluster = Cluster::new(ClusterOptions {
        nodes: 3,
        ..ClusterOptions::default()
    });
    let mtu = cluster.container_mtu();
    cluster.nodes[0].add_container("web", WEB, mtu);
    cluster.nodes[1].add_container("api", API, mtu);
    cluster.nodes[2].add_container("other", OTHER, mtu);
    cluster.sync_endpoints();
    let (web, api, other) = (
        cluster.container("web"),
        cluster.container("api"),
        cluster.container("other"),
    );
    let www = www();
    let _httpd = serve(api, 8080, www.path());
    let url = format!("http://{}:8080/", api.ip);

    // Policy 5 ("api-from-web"), as the compiler writes it on api's node: api's ingress
    // allows web on TCP 8080 only; api's egress allows nothing (replies still pass). Web's
    // ingress allows nothing either (its answers come back as replies).
    cluster.nodes[1].policy(vec![
        enforced(API, DIRECTION_INGRESS, 5),
        rule(key(API, WEB, TCP, 8080, DIRECTION_INGRESS), ACTION_ALLOW, 5),
        enforced(API, DIRECTION_EGRESS, 5),
    ]);
    cluster.nodes[0].policy(vec![enforced(WEB, DIRECTION_INGRESS, 6)]);
    let mut events = cluster.nodes[1].dp().subscribe_events();

    let page = web.run("curl", &["-sS", "-m", "5", &url]);
    assert!(page.status.success(), "web → api:8080: {}", text(&page));
    assert_eq!(text(&page), "hello over the overlay\n");
    assert!(!web.ping(api.ip), "ICMP web → api is not allowed");
    let denied = other.run("curl", &["-sS", "-m", "3", &url]);
    assert!(!denied.status.success(), "other → api must be dropped");
    assert!(!api.ping(web.ip), "api's egress allows nothing new");

    // The receiving node dropped other's SYN, under policy 5, knowing other's identity from
    // the VNI alone (node 1 was told nothing about node 2's containers by this policy).
    let event = cluster.nodes[1].runtime.run(async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = tokio::time::timeout(left, events.recv())
                .await
                .expect("the drop event within 10 s")
                .expect("event stream open");
            if event.reason == reason::DROPPED_POLICY && event.src_identity == OTHER {
                return event;
            }
        }
    });
    assert_eq!(
        (
            event.policy_id,
            event.direction,
            event.dst_identity,
            event.dport
        ),
        (5, DIRECTION_INGRESS, API, 8080)
    );
    assert_eq!(event.saddr, u32::from_ne_bytes(other.ip.octets()));
    // Nothing was dropped on the way out of node 2: the sender has no policy.
    assert_eq!(cluster.nodes[2].count(reason::DROPPED_POLICY), 0);

    // Egress policy is the sender's, on the sending node: web may reach api only on 8080.
    cluster.nodes[0].policy(vec![
        enforced(WEB, DIRECTION_EGRESS, 8),
        rule(key(WEB, API, TCP, 8080, DIRECTION_EGRESS), ACTION_ALLOW, 8),
    ]);
    cluster.nodes[1].policy(Vec::new());
    let before = cluster.nodes[0].count(reason::DROPPED_POLICY);
    assert!(!web.ping(api.ip), "web's egress allows no ICMP");
    assert!(
        cluster.nodes[0].count(reason::DROPPED_POLICY) > before,
        "dropped at the sender"
    );
    let page = web.run("curl", &["-sS", "-m", "5", &url]);
    assert!(
        page.status.success(),
        "web → api:8080 still: {}",
        text(&page)
    );
    // A peer known only through the tunnel map is WORLD to the sender's egress policy.
    let api_ip = api.ip;
    cluster.nodes[0]
        .with_dp(move |dp| async move { dp.remove_endpoint(api_ip).await })
        .expect("forget api on node 0");
    let out = web.run("curl", &["-sS", "-m", "3", &url]);
    assert!(!out.status.success(), "api is WORLD to web's egress now");
    let api_node = cluster.nodes[1].underlay_ip;
    cluster.nodes[0]
        .with_dp(move |dp| async move { dp.upsert_remote_endpoint(api_ip, API, api_node).await })
        .expect("api back on node 0");
    let page = web.run("curl", &["-sS", "-m", "5", &url]);
    assert!(page.status.success(), "{}", text(&page));
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn overlay_keeps_gso_whole_moves_a_gibibyte_and_shrinks_mtu() {
    let mut cluster = Cluster::new(ClusterOptions::default());
    let underlay_mtu = cluster.options.mtu;
    // web starts at the underlay's MTU, as on a node that was alone; joining a cluster
    // shrinks it (and its host side) to the underlay's MTU − 50.
    cluster.nodes[0].add_container("web", WEB, underlay_mtu);
    let mtu = cluster.container_mtu();
    cluster.nodes[1].add_container("api", API, mtu);
    let web = &cluster.nodes[0].containers[0];
    let path = std::path::PathBuf::from(web.netns.path());
    let host = web.link.host_ifname.clone();
    assert_eq!(mtu, underlay_mtu - OVERHEAD);
    cluster.nodes[0]
        .runtime
        .run(async move { link::set_container_mtu(&path, &host, mtu).await })
        .expect("set the container MTU");
    let eth0 = web.netns.ip(&["link", "show", "eth0"]);
    assert!(eth0.contains(&format!("mtu {mtu} ")), "{eth0}");
    let host_side = cluster.nodes[0]
        .netns
        .ip(&["link", "show", &web.link.host_ifname]);
    assert!(host_side.contains(&format!("mtu {mtu} ")), "{host_side}");
    let (web, api) = (cluster.container("web"), cluster.container("api"));

    // The largest packet that fits crosses, DF set; one byte more does not.
    let payload = (mtu - 28).to_string();
    let fits = web.run(
        "ping",
        &[
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &payload,
            &api.ip.to_string(),
        ],
    );
    assert!(fits.status.success(), "{mtu}-byte packet: {}", text(&fits));
    let too_big = (mtu - 27).to_string();
    let out = web.run(
        "ping",
        &[
            "-c",
            "1",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            &too_big,
            &api.ip.to_string(),
        ],
    );
    assert!(
        !out.status.success(),
        "a packet over the MTU left the container"
    );

    // 16 MiB by HTTP, then 1 GiB by iperf3; GSO super-packets cross whole.
    let www = www();
    let _httpd = serve(api, 8080, www.path());
    assert_eq!(
        fetch_size(web, &format!("http://{}:8080/big.bin", api.ip)),
        16 << 20
    );
    let mut server = api.netns.command("iperf3");
    server.args(["-s", "-1", "-p", "5201"]);
    let _server = Process::spawn("iperf3 -s", &mut server, &www.path().join("iperf3.log"));
    let started = Instant::now();
    let run = wait_for("iperf3 of 1 GiB", Duration::from_secs(120), || {
        let out = web.run(
            "iperf3",
            &[
                "-c",
                &api.ip.to_string(),
                "-p",
                "5201",
                "-n",
                "1G",
                "-J",
                "--connect-timeout",
                "1000",
            ],
        );
        // iperf3 3.12 exits 0 with `-J` even when it could not connect (the one-off server
        // not listening yet): its report then carries "error".
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (out.status.success() && report.get("error").is_none()).then_some(out)
    });
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).expect("iperf3 JSON report");
    // Some iperf3 versions leave `sum_sent` out of a `-n` run's report; the stream has it.
    let sent = json["end"]["sum_sent"]["bytes"]
        .as_f64()
        .or_else(|| json["end"]["streams"][0]["sender"]["bytes"].as_f64())
        .unwrap_or(0.0);
    let received = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    let gbits = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    // The receiver's report ends when the sender's does, a few buffers short of the total.
    assert!(
        sent >= f64::from(1u32 << 30),
        "sent {sent} bytes: {}",
        String::from_utf8_lossy(&run.stdout)
    );
    assert!(
        received >= 0.97 * sent,
        "received {received} of {sent} bytes"
    );
    eprintln!(
        "1 GiB through the overlay at {gbits:.2} Gbit/s ({:.1} s with set-up; machine load applies)",
        started.elapsed().as_secs_f64()
    );
    let stats = cluster.nodes[1].peer_stats();
    let from_0 = stats.first().expect("node 1's stats for node 0");
    #[allow(clippy::cast_precision_loss)] // statistics
    let average = from_0.rx_bytes as f64 / from_0.rx_packets as f64;
    assert!(
        average > 4.0 * f64::from(underlay_mtu),
        "GSO super-packets crossed whole: {average:.0} bytes per packet on average ({from_0:?})"
    );
    for node in &cluster.nodes {
        for why in [
            reason::DROPPED_MALFORMED,
            reason::DROPPED_INTERNAL,
            reason::DROPPED_TOO_BIG,
            reason::DROPPED_NO_ROUTE,
        ] {
            assert_eq!(
                node.count(why),
                0,
                "node {}: {}",
                node.index,
                reason::label(why)
            );
        }
    }

    // Without XDP (the default on veth), the TC program drops non-members' VXLAN itself.
    let stranger = Netns::new("hmstr");
    let stranger_ip = Ipv4Addr::new(192, 168, 100, 66);
    cluster.attach_host(&stranger, stranger_ip);
    stranger.ip(&[
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "300",
        "remote",
        "192.168.100.12",
        "dstport",
        "4789",
        "dev",
        UNDERLAY_IF,
    ]);
    stranger.ip(&["addr", "add", "10.244.2.200/24", "dev", "vx0"]);
    stranger.ip(&["link", "set", "vx0", "up"]);
    let xdp = cluster.nodes[1]
        .netns
        .ip(&["-d", "link", "show", UNDERLAY_IF]);
    assert!(
        !xdp.contains("prog/xdp"),
        "no XDP on a veth underlay by default:\n{xdp}"
    );
    let out = stranger.run("ping", &["-c", "2", "-W", "1", &api.ip.to_string()]);
    assert!(!out.status.success());
    assert!(cluster.nodes[1].count(reason::DROPPED_NOT_MEMBER) >= 1);
}
