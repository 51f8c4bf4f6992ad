//! The app-level steps the service, VIP, rollout and cluster tests repeat, through one agent's
//! CLI: deploy, list an app's containers, wait for healthy replicas, and run a command inside
//! a container (`ctr task exec`: the container's namespaces and cgroup, so its connects pass
//! the VIP's socket programs as the app's own would).

use std::{
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Agent, Containerd,
    util::{stderr, stdout, unique, wait_for},
};

/// containerd's namespace for the agent's containers.
pub const CONTAINERD_NS: &str = "hivemind";

/// `app deploy` arguments for a health check that writes the replica's id (its hostname) to
/// `/www/id` on every pass, so an answer for `/id` names the replica that gave it; touching
/// `/tmp/sick` in a replica makes it fail. Checked every second; one failure is unhealthy.
/// The id is written beside and renamed into place: a request must never meet the file
/// truncated by the redirection and not yet written (an empty answer).
pub const ID_CHECK: [&str; 8] = [
    "--health-cmd",
    "test ! -e /tmp/sick && hostname > /www/id.new && mv /www/id.new /www/id",
    "--health-interval",
    "1s",
    "--health-timeout",
    "900ms",
    "--health-retries",
    "1",
];

/// `hivemind app deploy --image IMAGE --name NAME EXTRA...`, with `--stop-timeout 1` unless
/// `extra` sets one (busybox httpd ignores SIGTERM; tests need not wait for the default).
pub fn deploy(agent: &Agent, image: &str, name: &str, extra: &[&str]) -> Output {
    let mut args = vec!["app", "deploy", "--image", image, "--name", name];
    if !extra.contains(&"--stop-timeout") {
        args.extend(["--stop-timeout", "1"]);
    }
    args.extend_from_slice(extra);
    agent.cli(&args)
}

/// [`deploy`] that must succeed; its output (stdout, then stderr).
pub fn deploy_ok(agent: &Agent, image: &str, name: &str, extra: &[&str]) -> String {
    let out = deploy(agent, image, name, extra);
    assert!(
        out.status.success(),
        "deploy {name} {extra:?} failed:\n{}\n{}\nagent log:\n{}",
        stdout(&out),
        stderr(&out),
        agent.log()
    );
    stdout(&out) + &stderr(&out)
}

/// `hivemind -o json app containers --app APP` (every node's, on a cluster).
pub fn containers(agent: &Agent, app: &str) -> Vec<Value> {
    agent
        .cli_json(&["app", "containers", "--app", app])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The app's entry in `hivemind -o json app ls`.
pub fn app_info(agent: &Agent, app: &str) -> Value {
    agent
        .cli_json(&["app", "ls"])
        .as_array()
        .and_then(|apps| apps.iter().find(|a| a["name"] == app).cloned())
        .unwrap_or_else(|| panic!("no app {app}"))
}

/// The app's virtual IP.
pub fn vip_of(agent: &Agent, app: &str) -> String {
    app_info(agent, app)["vip"]
        .as_str()
        .unwrap_or_else(|| panic!("app {app} has no VIP"))
        .to_owned()
}

/// Waits until the app has exactly `count` containers, all running and healthy (replaced or
/// stopping ones gone); returns them.
pub fn wait_healthy(agent: &Agent, app: &str, count: usize, timeout: Duration) -> Vec<Value> {
    wait_for(
        &format!("{count} healthy replicas of {app}"),
        timeout,
        || {
            let all = containers(agent, app);
            let healthy = all
                .iter()
                .filter(|c| c["state"] == "running" && c["health"] == "healthy")
                .count();
            (all.len() == count && healthy == count).then_some(all)
        },
    )
}

/// Waits for a running container of `app`; returns it.
pub fn wait_running(agent: &Agent, app: &str, timeout: Duration) -> Value {
    wait_for(&format!("a running {app}"), timeout, || {
        containers(agent, app)
            .into_iter()
            .find(|c| c["state"] == "running")
    })
}

/// Waits until `app`'s only container is a running one other than `old`; returns it.
pub fn wait_for_new_container(agent: &Agent, app: &str, old: &str, timeout: Duration) -> Value {
    wait_for(&format!("{app} to replace {old}"), timeout, || {
        let all = containers(agent, app);
        match all.as_slice() {
            [only] if only["id"] != old && only["state"] == "running" => Some(only.clone()),
            _ => None,
        }
    })
}

/// A container's id (from its JSON entry).
pub fn id(container: &Value) -> String {
    container["id"].as_str().expect("container id").to_owned()
}

/// A container's address.
pub fn ip(container: &Value) -> String {
    container["ip"].as_str().expect("container ip").to_owned()
}

/// Runs `sh -c script` inside container `id`, which the `containerd` of its node runs.
pub fn exec(containerd: &Containerd, id: &str, script: &str) -> Output {
    containerd.ctr(&[
        "-n",
        CONTAINERD_NS,
        "task",
        "exec",
        "--exec-id",
        &unique("x"),
        id,
        "sh",
        "-c",
        script,
    ])
}

/// `count` HTTP GETs of `path` on `host`:80 from container `client` (busybox `nc`, a new
/// connection each): the last line of each answer's body, or `FAIL`.
pub fn http_gets(
    containerd: &Containerd,
    client: &str,
    host: &str,
    path: &str,
    count: u32,
) -> Vec<String> {
    let out = exec(
        containerd,
        client,
        &format!(
            "for i in $(seq {count}); do \
               r=$(printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} 80) \
               && echo \"$r\" | grep -q '^HTTP/1.[01] 200' && echo \"$r\" | tail -n 1 || echo FAIL; \
             done"
        ),
    );
    assert!(out.status.success(), "exec in {client}: {}", stderr(&out));
    stdout(&out).lines().map(str::to_owned).collect()
}

/// How many times each answer came.
pub fn tally(answers: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.clone()).or_insert(0) += 1;
    }
    counts
}

/// How long `probe` took to hold, polling every 100 ms up to `timeout`.
pub fn time_until(what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    wait_for(what, timeout, || probe().then_some(()));
    started.elapsed()
}

/// A client container sending `GET /` to every target in its `/tmp/targets` in turn until
/// told to stop; it prints `FAIL ...` for each request not answered 200 and `ok=N fail=M` at
/// the end. It speaks HTTP with `nc`: the image's static busybox `wget` crashes on its name
/// lookup.
#[derive(Debug)]
pub struct LoadClient {
    id: String,
    process: std::process::Child,
    targets: String,
}

const LOAD_LOOP: &str = r#"ok=0; fail=0
while [ ! -f /tmp/stop ]; do
  targets=$(cat /tmp/targets 2>/dev/null)
  [ -n "$targets" ] || { sleep 0.1; continue; }
  for ip in $targets; do
    status=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 "$ip" 80 2>&1 | head -1)
    case $status in *" 200 "*) ok=$((ok+1)) ;; *) fail=$((fail+1)); echo "FAIL $ip $(date +%T) $status" ;; esac
  done
done
echo "ok=$ok fail=$fail""#;

impl LoadClient {
    /// Starts the loop in container `id`, which `containerd` runs; it waits for targets.
    pub fn start(containerd: &Containerd, id: &str) -> Self {
        let process = containerd
            .ctr_command()
            .args([
                "-n",
                CONTAINERD_NS,
                "tasks",
                "exec",
                "--exec-id",
                &unique("load"),
                id,
                "sh",
                "-c",
                LOAD_LOOP,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the client loop");
        Self {
            id: id.to_owned(),
            process,
            targets: String::new(),
        }
    }

    /// Points the loop at `targets` (addresses, port 80) from its next round on.
    pub fn target(&mut self, containerd: &Containerd, targets: &[String]) {
        let targets = targets.join(" ");
        if targets == self.targets || targets.is_empty() {
            return;
        }
        let out = exec(
            containerd,
            &self.id,
            &format!("echo '{targets}' > /tmp/targets.new && mv /tmp/targets.new /tmp/targets"),
        );
        assert!(out.status.success(), "set targets: {}", stderr(&out));
        self.targets = targets;
    }

    /// Stops the loop; returns (successful, failed requests, its output).
    pub fn stop(mut self, containerd: &Containerd) -> (u64, u64, String) {
        let _ = exec(containerd, &self.id, "touch /tmp/stop");
        let mut out = String::new();
        if let Some(mut pipe) = self.process.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut out);
        }
        let _ = self.process.wait();
        let count = |key: &str| {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in the client's output: {out}"))
        };
        (count("ok="), count("fail="), out)
    }
}

impl Drop for LoadClient {
    fn drop(&mut self) {
        // A test that panicked before `stop`: end the exec with the test.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
