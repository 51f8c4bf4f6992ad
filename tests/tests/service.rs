//! Service discovery and public access on one node: the agent's DNS server on the gateway
//! (from the node and from containers), containers' resolv.conf, names from inside containers,
//! the HTTP router by Host header from another namespace, health-driven removal, and name
//! clashes refused.

use std::{
    collections::BTreeSet,
    process::{Command, Output},
    time::{Duration, Instant},
};

use hivemind_tests::{
    AgentOptions, NODE_IP, Process, SingleNode, WORLD_IP, apps,
    util::{line_set, run, stderr, stdout, wait_for},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn deploy(node: &SingleNode, name: &str, extra: &[&str]) {
    apps::deploy_ok(&node.agent, &node.image, name, extra);
}

fn containers(node: &SingleNode, app: &str) -> Vec<Value> {
    apps::containers(&node.agent, app)
}

fn running_ips(node: &SingleNode, app: &str) -> BTreeSet<String> {
    containers(node, app)
        .iter()
        .filter(|c| c["state"] == "running")
        .filter_map(|c| c["ip"].as_str().map(str::to_owned))
        .collect()
}

fn gateway(node: &SingleNode) -> String {
    node.agent.cli_json(&["health"])["dataplane"]["gateway"]
        .as_str()
        .expect("health shows the gateway")
        .to_owned()
}

/// `dig` with a short timeout and one try, so a hang shows as a failure, not a slow test.
fn dig_args<'a>(server: &'a str, name: &'a str, kind: &'a str) -> Vec<String> {
    vec![
        format!("@{server}"),
        name.to_owned(),
        kind.to_owned(),
        "+time=3".to_owned(),
        "+tries=1".to_owned(),
    ]
}

fn dig_node(node: &SingleNode, name: &str, kind: &str, extra: &str) -> Output {
    let gw = gateway(node);
    let mut args = dig_args(&gw, name, kind);
    args.extend(extra.split_whitespace().map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    node.netns.run("dig", &args)
}

/// `dig` run in a container's network namespace (the host's dig, the container's network).
fn dig_container(node: &SingleNode, id: &str, name: &str, kind: &str, extra: &str) -> Output {
    let gw = gateway(node);
    let mut args = dig_args(&gw, name, kind);
    args.extend(extra.split_whitespace().map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    node.in_container(id, "dig", &args)
}

/// `sh -c SCRIPT` with the container's own files and network (its resolv.conf, its wget).
fn in_container_fs(container: &Value, script: &str) -> Output {
    let pid = container["pid"].as_u64().expect("pid").to_string();
    run(Command::new("nsenter").args(["-t", &pid, "-m", "-n", "--", "sh", "-c", script]))
}

/// `wget URL` in container `id`'s network namespace, resolving with its `/etc/resolv.conf`.
fn wget_as_container(node: &SingleNode, id: &str, url: &str) -> Output {
    let resolv = node
        .agent
        .data_dir()
        .join("containers")
        .join(id)
        .join("resolv.conf");
    run(Command::new("nsenter")
        .arg(format!(
            "--net=/run/hivemind/netns/{}/{id}",
            node.agent.node_name()
        ))
        .args(["--", "unshare", "-m", "--", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /etc/resolv.conf && wget -q -T 5 -O- {url}",
            resolv.display()
        )))
}

fn status_of(out: &Output) -> String {
    stdout(out)
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map_or_else(
            || format!("no status in: {}{}", stdout(out), stderr(out)),
            |s| s.split(',').next().unwrap_or_default().to_owned(),
        )
}

/// What a container sees: the same answers, its resolv.conf, and names that work in it.
fn from_a_container(node: &SingleNode, web_ips: &BTreeSet<String>, gw: &str) {
    // From inside a container: the same answers, through its own network.
    let client = containers(node, "client")
        .into_iter()
        .next()
        .expect("client container");
    let client_id = client["id"].as_str().expect("id").to_owned();
    assert_eq!(
        line_set(&dig_container(
            node,
            &client_id,
            "shop.example.com",
            "A",
            "+short"
        )),
        *web_ips
    );
    assert_eq!(
        status_of(&dig_container(
            node,
            &client_id,
            "nope.hivemind",
            "A",
            "+comments"
        )),
        "NXDOMAIN"
    );

    // The container's resolver is the node's, searching the suffix; and names work in it.
    let resolv = stdout(&in_container_fs(&client, "cat /etc/resolv.conf"));
    assert!(resolv.contains(&format!("nameserver {gw}\n")), "{resolv}");
    assert!(resolv.contains("search hivemind\n"), "{resolv}");
    assert!(
        !in_container_fs(&client, "echo x >> /etc/resolv.conf")
            .status
            .success(),
        "resolv.conf is read-only"
    );
    // The container's own resolver (busybox nslookup, reading its resolv.conf).
    let looked_up = stdout(&in_container_fs(&client, "nslookup web.hivemind"));
    for ip in web_ips {
        assert!(looked_up.contains(ip.as_str()), "{looked_up}");
    }
    // wget by name. The image's static busybox wget cannot use glibc's resolver (it crashes
    // in getaddrinfo), so the host's wget runs in the container's network namespace with the
    // container's resolv.conf mounted over its own: the same resolver, search list and route.
    for url in [
        "http://web/",
        "http://web.hivemind/",
        "http://shop.example.com/",
    ] {
        let out = wget_as_container(node, &client_id, url);
        assert!(
            stdout(&out).contains("hivemind test image"),
            "{url}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

#[test]
fn dns_answers_service_names_for_nodes_and_containers() {
    let node = SingleNode::start_with(&AgentOptions {
        extra_args: vec!["--dns-upstream".into(), "none".into()],
        ..AgentOptions::default()
    });
    deploy(
        &node,
        "web",
        &["--replicas", "2", "--service", "shop.example.com"],
    );
    deploy(&node, "client", &[]);
    let web_ips = running_ips(&node, "web");
    assert_eq!(web_ips.len(), 2, "{web_ips:?}");
    let gw = gateway(&node);

    // From the node's namespace.
    for name in ["web.hivemind", "shop.example.com", "WEB.hivemind."] {
        let got = wait_for(&format!("A records of {name}"), TIMEOUT, || {
            let got = line_set(&dig_node(&node, name, "A", "+short"));
            (got == web_ips).then_some(got)
        });
        assert_eq!(got, web_ips);
    }
    let answer = stdout(&dig_node(&node, "web.hivemind", "A", "+noall +answer"));
    let ttls: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(ttls, ["5", "5"], "TTL 5: {answer}");
    assert_eq!(
        status_of(&dig_node(&node, "nope.hivemind", "A", "+comments")),
        "NXDOMAIN"
    );
    assert_eq!(
        status_of(&dig_node(&node, "x.shop.example.com", "A", "+comments")),
        "NXDOMAIN"
    );
    let aaaa = dig_node(&node, "web.hivemind", "AAAA", "+comments");
    assert_eq!(status_of(&aaaa), "NOERROR");
    assert!(line_set(&dig_node(&node, "web.hivemind", "AAAA", "+short")).is_empty());
    // Not ours and no upstream: SERVFAIL at once, never a hang.
    let started = Instant::now();
    let outside = dig_node(&node, "example.org", "A", "+comments");
    assert_eq!(status_of(&outside), "SERVFAIL", "{}", stdout(&outside));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "SERVFAIL took {:?}",
        started.elapsed()
    );
    // Over TCP too.
    assert_eq!(
        line_set(&dig_node(&node, "web.hivemind", "A", "+short +tcp")),
        web_ips
    );

    from_a_container(&node, &web_ips, &gw);

    // Counters.
    let metrics = node
        .netns
        .check("curl", &["-s", "http://127.0.0.1:3000/metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hivemind_dns_queries_total{")
                && l.contains("result=\"answered\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains("result=\"servfail\"") && metrics.contains("result=\"nxdomain\""),
        "{metrics}"
    );

    // Scaling follows: one replica, one address.
    node.agent
        .cli_ok(&["app", "scale", "--name", "web", "--replicas", "1"]);
    let one = running_ips(&node, "web");
    wait_for("DNS to follow the scale-down", TIMEOUT, || {
        (line_set(&dig_node(&node, "web.hivemind", "A", "+short")) == one).then_some(())
    });
}

/// A resolver out in the world: answers every A question with 198.51.100.7 (a minimal DNS
/// responder on a real UDP socket, standing in for the node's upstream).
const UPSTREAM: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    q, peer = s.recvfrom(4096)
    end = 12
    while q[end] != 0:
        end += q[end] + 1
    question = q[12:end + 5]
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([198, 51, 100, 7])
    s.sendto(q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer, peer)
"#;

#[test]
fn other_names_are_forwarded_upstream() {
    let node = SingleNode::start_with_world(&AgentOptions {
        extra_args: vec!["--dns-upstream".into(), WORLD_IP.into()],
        ..AgentOptions::default()
    });
    let world = node.world.as_ref().expect("world");
    let log = node.agent.data_dir().join("upstream.log");
    let _upstream = Process::spawn(
        "upstream resolver",
        world
            .netns
            .command("/usr/bin/python3")
            .args(["-c", UPSTREAM, WORLD_IP]),
        &log,
    );
    let got = wait_for("a forwarded answer", TIMEOUT, || {
        let out = dig_node(&node, "example.org", "A", "+short");
        let got = line_set(&out);
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(got, BTreeSet::from(["198.51.100.7".to_owned()]));
    // Names in our zones never leave the node.
    assert_eq!(
        status_of(&dig_node(&node, "nope.hivemind", "A", "+comments")),
        "NXDOMAIN"
    );
    let metrics = node
        .netns
        .check("curl", &["-s", "http://127.0.0.1:3000/metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("result=\"forwarded\"") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// `curl` from the world namespace to the node's router with a Host header; (status, body).
fn curl_host(node: &SingleNode, host: &str, path: &str) -> (u16, String) {
    let world = node.world.as_ref().expect("world");
    let out = world.netns.run(
        "curl",
        &[
            "-s",
            "-m",
            "5",
            "-H",
            &format!("Host: {host}"),
            "-w",
            "\n%{http_code}",
            &format!("http://{NODE_IP}{path}"),
        ],
    );
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn router_routes_by_host_to_every_healthy_replica() {
    let node = SingleNode::start_with_world(&AgentOptions {
        extra_args: vec!["--dns-upstream".into(), "none".into()],
        ..AgentOptions::default()
    });
    deploy(
        &node,
        "web",
        &[
            "--replicas",
            "2",
            "--service",
            "shop.example.com",
            "--health-http",
            "80/index.html",
            "--health-interval",
            "1s",
            "--health-timeout",
            "500ms",
        ],
    );
    let replicas = wait_for("both replicas healthy", TIMEOUT, || {
        let all = containers(&node, "web");
        (all.len() == 2 && all.iter().all(|c| c["serving"] == true)).then_some(all)
    });
    // Each replica serves its own id at /who.html.
    for c in &replicas {
        let out = in_container_fs(c, "cat /etc/hostname > /www/who.html");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let ids: BTreeSet<String> = replicas
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect();

    let mut seen = BTreeSet::new();
    for host in ["shop.example.com", "Shop.Example.COM:80", "web.hivemind"] {
        for _ in 0..4 {
            let (code, body) = curl_host(&node, host, "/who.html");
            assert_eq!(code, 200, "{host}: {body}");
            seen.insert(body.trim().to_owned());
        }
    }
    assert_eq!(seen, ids, "round-robin reaches both replicas");

    let world = node.world.as_ref().expect("world");
    let (code, body) = curl_host(&node, "unknown.example.net", "/");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("unknown.example.net"), "{body}");

    // A POST streams its body through (busybox httpd answers 404/405/501 for it, but it is
    // the replica answering, not the router).
    let post = stdout(&world.netns.run(
        "curl",
        &[
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: shop.example.com",
            "--data-binary",
            "hello",
            &format!("http://{NODE_IP}/index.html"),
        ],
    ));
    assert!(!["502", "503", "000"].contains(&post.trim()), "{post}");

    node.agent
        .cli_ok(&["app", "scale", "--name", "web", "--replicas", "0"]);
    let (code, body) = wait_for("503 with no replica", TIMEOUT, || {
        let answer = curl_host(&node, "shop.example.com", "/");
        (answer.0 == 503).then_some(answer)
    });
    assert_eq!(code, 503);
    assert!(
        body.contains("shop.example.com") && body.contains("no healthy replica"),
        "{body}"
    );

    let metrics = node
        .netns
        .check("curl", &["-s", "http://127.0.0.1:3000/metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hivemind_router_requests_total{")
                && l.contains("code=\"2xx\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[test]
fn idempotent_requests_are_retried_on_another_replica() {
    let node = SingleNode::start_with_world(&AgentOptions {
        extra_args: vec!["--dns-upstream".into(), "none".into()],
        ..AgentOptions::default()
    });
    // No health check: a replica that refuses connections stays in rotation, as one that has
    // just died would be until its record changes.
    deploy(&node, "flaky", &["--replicas", "2"]);
    let replicas = wait_for("two serving replicas", TIMEOUT, || {
        let all = containers(&node, "flaky");
        (all.len() == 2 && all.iter().all(|c| c["serving"] == true)).then_some(all)
    });
    let broken = replicas[0]["id"].as_str().expect("id");
    let out = node.in_container(
        broken,
        "iptables",
        &[
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    );
    assert!(out.status.success(), "iptables: {}", stderr(&out));

    for _ in 0..6 {
        let (code, body) = curl_host(&node, "flaky.hivemind", "/index.html");
        assert_eq!(code, 200, "a GET is retried on the other replica: {body}");
    }
    // A POST is not retried: the turn that lands on the broken replica answers 502.
    let world = node.world.as_ref().expect("world");
    let codes: Vec<String> = (0..4)
        .map(|_| {
            stdout(&world.netns.run(
                "curl",
                &[
                    "-s",
                    "-m",
                    "5",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    "Host: flaky.hivemind",
                    "--data-binary",
                    "x",
                    &format!("http://{NODE_IP}/index.html"),
                ],
            ))
        })
        .collect();
    assert_eq!(codes.iter().filter(|c| *c == "502").count(), 2, "{codes:?}");
    let metrics = node
        .netns
        .check("curl", &["-s", "http://127.0.0.1:3000/metrics"]);
    let retries = metrics
        .lines()
        .find(|l| l.starts_with("hivemind_router_retries_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(retries >= 3, "{metrics}");
}

#[test]
fn an_unhealthy_replica_leaves_dns_and_the_router_within_one_interval() {
    let node = SingleNode::start_with_world(&AgentOptions {
        extra_args: vec!["--dns-upstream".into(), "none".into()],
        ..AgentOptions::default()
    });
    deploy(
        &node,
        "web",
        &[
            "--replicas",
            "2",
            "--health-http",
            "80/index.html",
            "--health-interval",
            "1s",
            "--health-timeout",
            "500ms",
            "--health-retries",
            "1",
        ],
    );
    let replicas = wait_for("both replicas healthy", TIMEOUT, || {
        let all = containers(&node, "web");
        (all.len() == 2 && all.iter().all(|c| c["serving"] == true)).then_some(all)
    });
    let all_ips: BTreeSet<String> = replicas
        .iter()
        .map(|c| c["ip"].as_str().expect("ip").to_owned())
        .collect();
    wait_for("both in DNS", TIMEOUT, || {
        (line_set(&dig_node(&node, "web.hivemind", "A", "+short")) == all_ips).then_some(())
    });

    let sick = &replicas[0];
    let sick_ip = sick["ip"].as_str().expect("ip").to_owned();
    let broke = Instant::now();
    assert!(in_container_fs(sick, "rm /www/index.html").status.success());
    wait_for(
        "the sick replica to leave DNS",
        Duration::from_secs(10),
        || {
            (!line_set(&dig_node(&node, "web.hivemind", "A", "+short")).contains(&sick_ip))
                .then_some(())
        },
    );
    let gone_after = broke.elapsed();
    // One interval (1 s) until the next check, its timeout (0.5 s), and the store's watch.
    assert!(
        gone_after < Duration::from_millis(2500),
        "left DNS after {gone_after:?}"
    );
    // The router sends nothing to it: every request reaches a replica that has the page.
    for _ in 0..6 {
        let (code, body) = curl_host(&node, "web.hivemind", "/index.html");
        assert_eq!(code, 200, "{body}");
    }
    println!("unhealthy replica left DNS after {gone_after:?}");
}

#[test]
fn taken_service_names_are_refused_and_nothing_changes() {
    let node = SingleNode::start_with(&AgentOptions {
        extra_args: vec![
            "--dns-upstream".into(),
            "none".into(),
            "--http-addr".into(),
            "off".into(),
        ],
        ..AgentOptions::default()
    });
    deploy(&node, "web", &["--service", "shop.example.com"]);
    let before = node.agent.cli_json(&["app", "ls"]);
    for (name, service, needle) in [
        ("other", "shop.example.com", "already taken by app web"),
        ("other", "web.hivemind", "reserved"),
        ("other", "hivemind", "DNS suffix"),
    ] {
        let out = node.agent.cli(&[
            "app",
            "deploy",
            "--image",
            &node.image,
            "--name",
            name,
            "--service",
            service,
        ]);
        assert!(!out.status.success(), "{service} accepted");
        assert!(stderr(&out).contains(needle), "{service}: {}", stderr(&out));
    }
    assert_eq!(
        node.agent.cli_json(&["app", "ls"]),
        before,
        "nothing changed"
    );
    assert!(
        !node.agent.cli_ok(&["app", "containers"]).contains("other-"),
        "no container made"
    );

    // The names show in the API.
    let web = node.agent.cli_json(&["app", "ls"])[0].clone();
    assert_eq!(
        web["service_names"],
        serde_json::json!(["web.hivemind", "shop.example.com"]),
        "{web}"
    );
    let endpoints = wait_for("an endpoint", TIMEOUT, || {
        let web = node.agent.cli_json(&["app", "ls"])[0].clone();
        web["endpoints"]
            .as_array()
            .filter(|e| e.len() == 1)
            .cloned()
    });
    assert!(
        endpoints[0].as_str().is_some_and(|e| e.ends_with(":80")),
        "{endpoints:?}"
    );
    let id = containers(&node, "web")[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let info = node
        .agent
        .cli_ok(&["app", "container-info", "--container-id", &id]);
    assert!(
        info.contains("web.hivemind, shop.example.com (serving"),
        "{info}"
    );
    let table = node.agent.cli_ok(&["app", "containers"]);
    assert!(
        table.contains("web.hivemind, shop.example.com -> 10."),
        "{table}"
    );
}
