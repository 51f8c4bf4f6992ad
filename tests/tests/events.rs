//! `hivemind events`: the past the records show (`--since`), and `-f` streaming a killed
//! container's exit (with its code) and its restart as they happen.

use std::time::{Duration, Instant};

use hivemind_tests::{
    SingleNode,
    apps::{self, deploy_ok},
};

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn events_show_the_past_and_follow_a_killed_container_restarting() {
    let node = SingleNode::start();
    let agent = &node.agent;
    deploy_ok(agent, &node.image, "web", &[]);
    let container = apps::wait_running(agent, "web", TIMEOUT);
    let id = apps::id(&container);

    let past = agent.cli_ok(&["events", "--since", "10m"]);
    assert!(
        past.lines()
            .any(|l| l.contains("app") && l.contains("deployed") && l.contains("web")),
        "{past}"
    );
    assert!(
        past.lines()
            .any(|l| l.contains(&id) && l.contains("started")),
        "{past}"
    );

    let (mut follow, rx) = agent.cli_lines(&["-o", "json", "events", "-f"]);
    // The stream is set up once the process is connected; give it a moment, then kill.
    std::thread::sleep(Duration::from_millis(500));
    node.containerd
        .ctr_ok(&["-n", "hivemind", "task", "kill", "-s", "SIGKILL", &id]);

    let deadline = Instant::now() + TIMEOUT;
    let (mut exited, mut restarted) = (false, false);
    let mut seen = Vec::new();
    while !(exited && restarted) && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        if event["kind"] == "container" && event["name"] == id.as_str() {
            if event["action"] == "exited" {
                assert_eq!(event["exit_code"], 137, "{event}");
                exited = true;
            }
            if event["action"] == "started" && exited {
                restarted = true;
            }
        }
        seen.push(line);
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(exited && restarted, "saw:\n{}", seen.join("\n"));
}
