//! `hivemind app logs --name APP`: every replica's output interleaved line by line, each line
//! prefixed by its container id; `--tail` per replica; `-f` keeps streaming what the replicas
//! write after it started.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use hivemind_tests::{
    SingleNode,
    apps::{self, deploy_ok},
    util::{hivemind_bin, stderr, wait_for},
};

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn app_logs_interleave_every_replica_with_its_id() {
    let node = SingleNode::start();
    let agent = &node.agent;
    deploy_ok(agent, &node.image, "web", &["--replicas", "3"]);
    let replicas = wait_for("3 running replicas", TIMEOUT, || {
        let all = apps::containers(agent, "web");
        (all.len() == 3 && all.iter().all(|c| c["state"] == "running")).then_some(all)
    });
    let ids: Vec<String> = replicas.iter().map(apps::id).collect();

    // Every replica's start line, prefixed by its own id.
    let all = agent.cli_ok(&["app", "logs", "--name", "web"]);
    for id in &ids {
        let line = all
            .lines()
            .find(|l| l.contains(&format!("hivemind test image on {id}")))
            .unwrap_or_else(|| panic!("no start line of {id} in:\n{all}"));
        assert!(line.starts_with(&format!("{id} ")), "{line}");
        assert!(line.contains(" | "), "{line}");
    }
    // --tail 1: one line per replica.
    let tail = agent.cli_ok(&["app", "logs", "--name", "web", "--tail", "1"]);
    assert_eq!(tail.lines().count(), 3, "{tail}");

    // -f: a request served after the stream started shows up, from the replica that served it.
    let mut follow = Command::new(hivemind_bin())
        .arg("--addr")
        .arg(format!("unix:{}", agent.socket().display()))
        .args(["app", "logs", "--name", "web", "-f", "--tail", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("app logs -f");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let target = &replicas[1];
    let ip = apps::ip(target);
    let id = apps::id(target);
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    let found = loop {
        let _ = node
            .netns
            .run("curl", &["-s", "-o", "/dev/null", &format!("http://{ip}/")]);
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            if line.starts_with(&format!("{id} ")) {
                break true;
            }
            seen.push(line);
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(found, "no line from {id} after a request; saw {seen:?}");

    // Neither or both: a clear usage error.
    let out = agent.cli(&["app", "logs"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--container-id"), "{}", stderr(&out));
    let out = agent.cli(&["app", "logs", "--name", "nope"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
}
