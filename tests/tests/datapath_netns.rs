//! The datapath in a namespace topology: a node namespace running the dataplane in-process (as
//! the agent would), containers plumbed by `net::link`, and a client namespace linked to the
//! node's uplink. Redirects, masquerading, DNAT and restarts are what test-run cannot show.
//!
//! ```text
//!   [client] 192.168.77.2 ── veth ── 192.168.77.1 [node: hivemind0 10.244.0.1] ── hmXXXXXXXX ── [a] 10.244.0.2
//!                                                                               ── hmXXXXXXXX ── [b] 10.244.0.3
//!                                                                               ── hmXXXXXXXX ── [c] 10.244.0.4
//! ```

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    process::Output,
    time::{Duration, Instant},
};

use hivemind_agent::net::{
    dataplane::{self, DataplaneHandle},
    link::{self, ContainerLink},
};
use hivemind_common::{
    config::Config,
    ct::{PortKey, PortTarget},
    endpoint::{Endpoint, FLAG_LOCAL},
    event::VERDICT_DROPPED,
    identity,
    policy::{
        ACTION_ALLOW, ACTION_DENY, ANY_PORT, DIRECTION_INGRESS, ENFORCED_PORT, PROTO_ANY,
        PolicyKey, PolicyValue,
    },
    reason,
};
use hivemind_tests::{
    Netns, Process,
    node::NodeRuntime,
    util::{check, unique, wait_for},
    veth,
};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const BIG_FILE: usize = 4 << 20;

fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

struct Container {
    netns: Netns,
    ip: Ipv4Addr,
    identity: u32,
    link: ContainerLink,
}

impl Container {
    fn ping(&self, target: Ipv4Addr) -> bool {
        self.netns
            .run("ping", &["-c", "1", "-W", "1", &target.to_string()])
            .status
            .success()
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.netns.run(program, args)
    }
}

/// Field order is drop order: the dataplane and runtime go before the namespaces.
struct Topology {
    dataplane: Option<DataplaneHandle>,
    runtime: NodeRuntime,
    pin_dir: PathBuf,
    containers: Vec<Container>,
    uplink: String,
    client: Netns,
    node: Netns,
    www: tempfile::TempDir,
}

impl Topology {
    fn new() -> Self {
        let node = Netns::new("hmn");
        let client = Netns::new("hmc");
        let (uplink, _) = veth(
            &node,
            &format!("{NODE_IP}/24"),
            &client,
            &format!("{CLIENT_IP}/24"),
        );
        let runtime = NodeRuntime::new(&node);
        runtime
            .run(link::setup_node(
                "10.244.0.0/24".parse().expect("subnet"),
                GATEWAY,
                "10.244.0.0/16".parse().expect("cluster"),
            ))
            .expect("setup node");
        let www = tempfile::tempdir().expect("www dir");
        std::fs::write(www.path().join("index.html"), "hello from a container\n").expect("index");
        // Big enough for GSO super-packets, whose checksums the NAT rewrites must keep right.
        let big: Vec<u8> = (0..BIG_FILE)
            .map(|i| u8::try_from(i % 251).expect("< 251"))
            .collect();
        std::fs::write(www.path().join("big.bin"), big).expect("big file");
        let pin_dir = PathBuf::from("/sys/fs/bpf/hivemind").join(unique("netns"));
        let mut topology = Self {
            dataplane: None,
            runtime,
            pin_dir,
            containers: Vec::new(),
            uplink,
            client,
            node,
            www,
        };
        topology.start_dataplane();
        for (n, name) in ["a", "b", "c"].iter().enumerate() {
            let last = u8::try_from(n + 2).expect("small");
            let ip = Ipv4Addr::new(10, 244, 0, last);
            let identity = identity::FIRST_APP + u32::from(last);
            topology.add_container(name, ip, identity);
        }
        topology
    }

    fn start_dataplane(&mut self) {
        let pin_dir = self.pin_dir.clone();
        let handle = self
            .runtime
            .run(async move { dataplane::start(&pin_dir) })
            .expect("start the dataplane");
        let dp = handle.clone();
        self.runtime
            .run(async move {
                dp.set_config(Config {
                    node_ip: wire(NODE_IP),
                    gateway_ip: wire(GATEWAY),
                    ..Config::default()
                })
                .await
            })
            .expect("config");
        self.dataplane = Some(handle);
    }

    fn stop_dataplane(&mut self) {
        if let Some(dp) = self.dataplane.take() {
            self.runtime.run(async move { dp.shutdown().await });
        }
    }

    fn dp(&self) -> DataplaneHandle {
        self.dataplane.clone().expect("dataplane running")
    }

    fn add_container(&mut self, name: &str, ip: Ipv4Addr, identity: u32) {
        let netns = Netns::new(&format!("hm{name}"));
        let path = PathBuf::from(netns.path());
        let id = format!(
            "{:08x}{name}",
            std::process::id() ^ u32::from(ip.octets()[3]) << 24
        );
        let link = self
            .runtime
            .run(async move { link::plumb_container(&path, &id, ip, GATEWAY, 1500).await })
            .expect("plumb container");
        let dp = self.dp();
        let endpoint = Endpoint {
            ifindex: link.host_ifindex,
            identity,
            flags: FLAG_LOCAL,
            mac: link.container_mac,
            gw_mac: link.host_mac,
            ..Endpoint::default()
        };
        let ifindex = link.host_ifindex;
        self.runtime
            .run(async move {
                dp.upsert_endpoint(ip, endpoint).await?;
                dp.attach_container(ifindex).await
            })
            .expect("register the endpoint");
        self.containers.push(Container {
            netns,
            ip,
            identity,
            link,
        });
    }

    fn c(&self, name: &str) -> &Container {
        let i = match name {
            "a" => 0,
            "b" => 1,
            _ => 2,
        };
        &self.containers[i]
    }

    fn policy(&self, entries: Vec<(PolicyKey, PolicyValue)>) {
        let dp = self.dp();
        self.runtime
            .run(async move { dp.replace_policy(entries, Vec::new()).await })
            .expect("replace policy");
    }

    fn count(&self, wanted: u32) -> u64 {
        let dp = self.dp();
        self.runtime
            .run(async move { dp.counters().await })
            .expect("counters")
            .into_iter()
            .find(|c| c.reason == wanted)
            .map_or(0, |c| c.packets)
    }

    fn policy_drops(&self, policy_id: u32) -> u64 {
        let dp = self.dp();
        self.runtime
            .run(async move { dp.policy_counters().await })
            .expect("policy counters")
            .get(&policy_id)
            .map_or(0, |c| c.packets)
    }

    /// busybox httpd serving the test page on `port` inside container `name`.
    fn serve(&self, name: &str, port: u16) -> Process {
        let c = self.c(name);
        let log = self.www.path().join(format!("httpd-{name}-{port}.log"));
        let mut command = c.netns.command("busybox");
        command
            .args(["httpd", "-f", "-p", &port.to_string(), "-h"])
            .arg(self.www.path());
        let process = Process::spawn("httpd", &mut command, &log);
        let ip = c.ip;
        wait_for("httpd to listen", Duration::from_secs(10), || {
            c.run(
                "curl",
                &[
                    "-sf",
                    "-m",
                    "1",
                    "-o",
                    "/dev/null",
                    &format!("http://{ip}:{port}/"),
                ],
            )
            .status
            .success()
            .then_some(())
        });
        process
    }

    /// What the kernel runs on each container veth and the uplink: (hook, program id, name).
    fn attached(&self) -> BTreeMap<String, Vec<(&'static str, u32, String)>> {
        let mut names: Vec<String> = self
            .containers
            .iter()
            .map(|c| c.link.host_ifname.clone())
            .collect();
        names.push(self.uplink.clone());
        let dp = self.dp();
        self.runtime.run(async move {
            let mut out = BTreeMap::new();
            for name in names {
                let programs = dp.tcx_programs(&name).await.expect("query TCX");
                out.insert(
                    name,
                    programs
                        .into_iter()
                        .map(|p| (p.hook, p.id, p.name))
                        .collect(),
                );
            }
            out
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop_dataplane();
        // Unpinning releases the links; the namespaces take interfaces, routes and the nft
        // table with them when they go.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Size of what curl in `netns` downloads from `url` (0 on failure).
fn fetch_size(netns: &Netns, url: &str) -> usize {
    let out = netns.run(
        "curl",
        &[
            "-sS",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            url,
        ],
    );
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn key(identity: u32, peer: u32, protocol: u8, direction: u8) -> PolicyKey {
    PolicyKey {
        identity,
        peer,
        dport: ANY_PORT,
        protocol,
        direction,
    }
}

fn entry(key: PolicyKey, action: u32, policy_id: u32) -> (PolicyKey, PolicyValue) {
    (key, PolicyValue { action, policy_id })
}

fn enforced(identity: u32) -> (PolicyKey, PolicyValue) {
    entry(
        PolicyKey {
            identity,
            peer: identity::ANY,
            dport: ENFORCED_PORT,
            protocol: PROTO_ANY,
            direction: DIRECTION_INGRESS,
        },
        ACTION_ALLOW,
        0,
    )
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn containers_talk_reach_the_node_and_the_world_and_policy_applies() {
    let t = Topology::new();
    let (a, b, c) = (t.c("a"), t.c("b"), t.c("c"));

    // Container to container, both ways, by redirect.
    let forwarded = t.count(reason::FORWARDED_LOCAL);
    assert!(a.ping(b.ip), "a → b");
    assert!(b.ping(c.ip), "b → c");
    assert!(c.ping(a.ip), "c → a");
    assert!(
        t.count(reason::FORWARDED_LOCAL) >= forwarded + 6,
        "request and reply each redirected"
    );

    // TCP between containers.
    let _httpd = t.serve("b", 8080);
    let page = a.run(
        "curl",
        &["-sS", "-m", "3", &format!("http://{}:8080/", b.ip)],
    );
    assert!(
        page.status.success(),
        "curl a → b: {}",
        String::from_utf8_lossy(&page.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&page.stdout),
        "hello from a container\n"
    );

    assert_eq!(
        fetch_size(&a.netns, &format!("http://{}:8080/big.bin", b.ip)),
        BIG_FILE,
        "4 MiB a → b"
    );

    // The node's gateway address, and the client beyond the uplink. The client has no route to
    // the container subnet, so its answer arriving proves the source was masqueraded.
    assert!(a.ping(GATEWAY), "a → gateway");
    assert!(
        !t.client.ip(&["route", "show"]).contains("10.244."),
        "client knows no container route"
    );
    assert!(a.ping(CLIENT_IP), "a → client, masqueraded");
    let nft = check(
        t.node
            .command("nft")
            .args(["list", "table", "ip", "hivemind"]),
    );
    assert!(nft.contains("masquerade"), "{nft}");
    // The client's own view: a CGI on the client echoes the peer address it saw.
    let cgi = t.www.path().join("cgi-bin");
    std::fs::create_dir_all(&cgi).expect("cgi-bin");
    let script = cgi.join("peer");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n",
    )
    .expect("cgi script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut httpd = t.client.command("busybox");
    httpd
        .args(["httpd", "-f", "-p", "8081", "-h"])
        .arg(t.www.path());
    let _client_httpd = Process::spawn(
        "client httpd",
        &mut httpd,
        &t.www.path().join("client-httpd.log"),
    );
    let seen = wait_for("the client's CGI", Duration::from_secs(10), || {
        let out = a.run(
            "curl",
            &[
                "-sf",
                "-m",
                "2",
                &format!("http://{CLIENT_IP}:8081/cgi-bin/peer"),
            ],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    // busybox httpd listens dual-stack: "[::ffff:192.168.77.1]".
    let seen = seen.trim_start_matches("[::ffff:").trim_end_matches(']');
    assert_eq!(
        seen,
        NODE_IP.to_string(),
        "the client sees the node's address, not a's"
    );

    // b accepts only c: a → b is dropped; c → b, b → a (and its replies) and a → c still work.
    let mut events = t.dp().subscribe_events();
    let drops = t.count(reason::DROPPED_POLICY);
    t.policy(vec![
        enforced(b.identity),
        entry(
            key(b.identity, c.identity, PROTO_ANY, DIRECTION_INGRESS),
            ACTION_ALLOW,
            3,
        ),
    ]);
    assert!(!a.ping(b.ip), "a → b must be dropped");
    assert!(c.ping(b.ip), "c → b allowed");
    assert!(b.ping(a.ip), "b → a: replies pass b's default-deny ingress");
    assert!(a.ping(c.ip), "a → c unaffected");
    assert!(t.count(reason::DROPPED_POLICY) > drops, "drop counted");
    assert!(
        t.policy_drops(0) > 0,
        "counted under default deny (policy 0)"
    );
    let event = t.runtime.run(async move {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .expect("an event within 5 s")
                .expect("event stream open");
            if event.reason == reason::DROPPED_POLICY {
                return event;
            }
        }
    });
    assert_eq!(event.verdict, VERDICT_DROPPED);
    assert_eq!((event.saddr, event.daddr), (wire(a.ip), wire(b.ip)));
    assert_eq!(
        (event.src_identity, event.dst_identity, event.direction),
        (a.identity, b.identity, DIRECTION_INGRESS)
    );

    // A new rule set takes effect at once: allow a too ...
    t.policy(vec![
        enforced(b.identity),
        entry(
            key(b.identity, c.identity, PROTO_ANY, DIRECTION_INGRESS),
            ACTION_ALLOW,
            3,
        ),
        entry(
            key(b.identity, a.identity, PROTO_ANY, DIRECTION_INGRESS),
            ACTION_ALLOW,
            4,
        ),
    ]);
    let start = Instant::now();
    assert!(a.ping(b.ip), "a → b allowed after the replace");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    // ... then deny a's ICMP explicitly (policy 9): deny beats allow, and is counted by name.
    t.policy(vec![
        entry(
            key(b.identity, identity::ANY, PROTO_ANY, DIRECTION_INGRESS),
            ACTION_ALLOW,
            4,
        ),
        entry(
            key(b.identity, a.identity, 1, DIRECTION_INGRESS),
            ACTION_DENY,
            9,
        ),
    ]);
    assert!(!a.ping(b.ip), "a → b ICMP denied");
    assert!(t.policy_drops(9) > 0, "counted under policy 9");
    let page = a.run(
        "curl",
        &["-sS", "-m", "3", &format!("http://{}:8080/", b.ip)],
    );
    assert!(page.status.success(), "TCP a → b still allowed");

    // status names every attachment.
    let dp = t.dp();
    let status = t
        .runtime
        .run(async move { dp.status().await })
        .expect("status");
    let from = status
        .programs
        .iter()
        .find(|p| p.name == "hm_from_container")
        .expect("program");
    assert!(from.id > 0);
    for container in &t.containers {
        let want = format!("{}/ingress", container.link.host_ifname);
        assert!(
            from.attached.contains(&want),
            "{want} in {:?}",
            from.attached
        );
    }

    // Tearing the node down removes the gateway device and the nftables table.
    t.runtime.run(link::teardown_node()).expect("teardown node");
    assert!(
        !t.node
            .ip(&["-o", "link", "show"])
            .contains(link::GATEWAY_DEVICE)
    );
    let nft = t.node.run("nft", &["list", "table", "ip", link::NFT_TABLE]);
    assert!(
        !nft.status.success(),
        "table {} still there",
        link::NFT_TABLE
    );
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn published_ports_and_restarts_keep_traffic_flowing() {
    let mut t = Topology::new();
    let b_ip = t.c("b").ip;
    let _httpd = t.serve("b", 80);

    // Publish node:8080 → b:80 and attach the uplink program.
    let dp = t.dp();
    let uplink = t.uplink.clone();
    t.runtime
        .run(async move {
            dp.set_ports(vec![
                (
                    PortKey {
                        port: 8080,
                        protocol: 6,
                        _pad: 0,
                    },
                    PortTarget {
                        ip: wire(b_ip),
                        port: 80,
                        _pad: 0,
                    },
                ),
                (
                    PortKey {
                        port: 9000,
                        protocol: 6,
                        _pad: 0,
                    },
                    PortTarget {
                        ip: wire(b_ip),
                        port: 9000,
                        _pad: 0,
                    },
                ),
            ])
            .await?;
            dp.attach_node_ingress(&uplink).await
        })
        .expect("publish");
    let fetch = |client: &Netns| {
        client.run(
            "curl",
            &["-sS", "-m", "3", &format!("http://{NODE_IP}:8080/")],
        )
    };
    // The client talks to the node's address only: an answer from anywhere else would be reset.
    let page = fetch(&t.client);
    assert!(
        page.status.success(),
        "client → node:8080: {}",
        String::from_utf8_lossy(&page.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&page.stdout),
        "hello from a container\n"
    );
    assert!(
        t.count(reason::FORWARDED_PORT_MAP) >= 2,
        "DNAT and reverse NAT counted"
    );
    let url = format!("http://{NODE_IP}:8080/big.bin");
    assert_eq!(
        fetch_size(&t.client, &url),
        BIG_FILE,
        "4 MiB through the published port"
    );
    // And the other way: iperf3 pushes 8 MiB from the client through the DNAT (GSO packets
    // arriving on the uplink); its control and data connections both use the published port.
    let mut server = t.c("b").netns.command("iperf3");
    server.args(["-s", "-1", "-p", "9000"]);
    let _server = Process::spawn("iperf3 -s", &mut server, &t.www.path().join("iperf3.log"));
    let upload = wait_for(
        "iperf3 through the published port",
        Duration::from_secs(15),
        || {
            let out = t.client.run(
                "iperf3",
                &[
                    "-c",
                    &NODE_IP.to_string(),
                    "-p",
                    "9000",
                    "-n",
                    "8M",
                    "--connect-timeout",
                    "1000",
                ],
            );
            out.status.success().then_some(out)
        },
    );
    let report = String::from_utf8_lossy(&upload.stdout);
    assert!(report.contains("receiver"), "{report}");

    // A ping keeps going while the dataplane is down and after a new one takes over.
    let a = t.c("a");
    let log = t.www.path().join("ping.log");
    let mut command = a.netns.command("ping");
    command.args(["-i", "0.1", "-c", "40", "-W", "1", &b_ip.to_string()]);
    let mut ping = Process::spawn("ping", &mut command, &log);
    std::thread::sleep(Duration::from_millis(500));
    let before = t.attached();
    t.stop_dataplane();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(t.c("a").ping(b_ip), "forwarding with no dataplane owner");
    t.start_dataplane();
    let after = t.attached();
    let dp = t.dp();
    let status = t
        .runtime
        .run(async move { dp.status().await })
        .expect("status");
    let id = |name: &str| {
        status
            .programs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.id)
            .expect("program")
    };
    for container in &t.containers {
        let name = &container.link.host_ifname;
        let want = vec![
            // The kernel keeps 15 bytes of a program's name.
            (
                "ingress",
                id("hm_from_container"),
                "hm_from_contain".to_owned(),
            ),
            (
                "egress",
                id("hm_to_container"),
                "hm_to_container".to_owned(),
            ),
        ];
        assert_eq!(
            after[name], want,
            "exactly one program per hook on {name}, the new ones"
        );
        assert_eq!(before[name].len(), 2, "{before:?}");
        assert_ne!(
            before[name][0].1, after[name][0].1,
            "the links were updated to the new programs"
        );
    }
    assert_eq!(
        after[&t.uplink],
        vec![(
            "ingress",
            id("hm_node_ingress"),
            "hm_node_ingress".to_owned()
        )],
        "uplink program adopted, not duplicated"
    );
    let from = status
        .programs
        .iter()
        .find(|p| p.name == "hm_from_container")
        .expect("program");
    assert_eq!(from.attached.len(), 3, "{:?}", from.attached);
    let bpftool =
        check(
            t.node
                .command("bpftool")
                .args(["prog", "show", "id", &from.id.to_string()]),
        );
    assert!(bpftool.contains("hm_from_contain"), "{bpftool}");

    let status = wait_for("the ping to finish", Duration::from_secs(20), || {
        ping.exited()
    });
    let out = std::fs::read_to_string(ping.log_path()).unwrap_or_default();
    assert!(
        status.success(),
        "ping lost packets across the restart:\n{out}"
    );
    assert!(out.contains(" 0% packet loss"), "{out}");

    // Published ports survive too (pinned maps).
    let page = fetch(&t.client);
    assert!(
        page.status.success(),
        "after restart: {}",
        String::from_utf8_lossy(&page.stderr)
    );

    // Unpublishing: detach the uplink program and the node answers for itself again (nothing
    // listens on 8080 there).
    let dp = t.dp();
    let uplink = t.uplink.clone();
    t.runtime
        .run(async move { dp.detach_node_ingress(&uplink).await })
        .expect("detach node ingress");
    assert!(!fetch(&t.client).status.success(), "no DNAT once detached");

    // Removing a container: detach, forget the endpoint, unplumb. Its pins and veth go.
    let c = t.c("c");
    let (c_ip, ifindex, ifname) = (c.ip, c.link.host_ifindex, c.link.host_ifname.clone());
    let dp = t.dp();
    let name = ifname.clone();
    t.runtime
        .run(async move {
            dp.detach_container(ifindex).await.expect("detach");
            dp.remove_endpoint(c_ip).await.expect("remove endpoint");
            link::unplumb_container(&name).await
        })
        .expect("remove container c");
    for program in ["hm_from_container", "hm_to_container"] {
        let pin = t.pin_dir.join(format!("link_{program}_{ifindex}"));
        assert!(!pin.exists(), "{} left behind", pin.display());
    }
    let links = t.node.ip(&["-o", "link", "show"]);
    assert!(!links.contains(&ifname), "{ifname} still there:\n{links}");
    assert!(t.c("a").ping(b_ip), "the others keep working");
}
