//! `deploy`: how long `hivemind app deploy` takes to get a container running (image already
//! present), next to `ctr run -d` of the same image on the same containerd; and `hivemind app
//! scale` 0→20 (and back) next to 20 `ctr run -d`, 8 at a time (the agent's own parallelism);
//! and what a slow pull of one app (a registry that answers each request a second late)
//! costs a concurrent `app scale` of another: nothing, when no lock is held across a pull.
//!
//! Topology: [`SingleNode`] — a namespace holding the harness registry (127.0.0.1:5000) and
//! the release agent; a private containerd. The agent's containers live in containerd
//! namespace `hivemind`, ctr's in `bench` (so the agent never adopts or removes them).

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use hivemind_tests::{AgentOptions, SingleNode};

use crate::{
    Bench, Options, Report,
    common::{ensure_ok, interleave, ms},
    report::{Better, Table},
};

pub const BENCH: Bench = Bench {
    name: "deploy",
    about: "app deploy → running vs `ctr run -d`; app scale 0→20 (and 20→0)",
    run,
};

/// containerd namespace for the baseline's containers.
const CTR_NS: &str = "bench";
const FLEET: u32 = 20;
/// The agent's reconciler creates and removes this many containers at once.
const PARALLEL: usize = 8;
/// Grace period between SIGTERM and SIGKILL for the bench's apps (short, so a container that
/// ignored SIGTERM would not dominate the scale-down time).
const STOP_TIMEOUT: &str = "1";

const DEPLOY: &str = "deploy → running (1 container)";
const SCALE_UP: &str = "scale 0→20 (ctr: 20 × run -d, 8 at a time)";
const SCALE_DOWN: &str = "scale 20→0 (ctr: 20 × tasks rm -f, 8 at a time)";
const ROUND_TRIP: &str = "client round trip (hivemind health; ctr version)";
const SCALE_BESIDE_PULL: &str = "scale 0→1 of another app";
/// The slow registry: a proxy in the node's namespace in front of the harness registry that
/// holds every request for [`SLOW_REQUEST`] before passing it on.
const SLOW_REGISTRY: &str = "127.0.0.1:5001";
const SLOW_REQUEST: &str = "1.0";
const SLOW_PROXY: &str = r"
import socket, sys, threading, time
port, upstream, delay = int(sys.argv[1]), sys.argv[2].split(':'), float(sys.argv[3])
def pipe(src, dst, late):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if late:
                time.sleep(delay)
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(('127.0.0.1', port))
server.listen(64)
while True:
    client, _ = server.accept()
    up = socket.create_connection((upstream[0], int(upstream[1])))
    threading.Thread(target=pipe, args=(client, up, True), daemon=True).start()
    threading.Thread(target=pipe, args=(up, client, False), daemon=True).start()
";

fn run(options: &Options) -> Report {
    let reps = options.reps(10, 3);
    let scale_reps = options.reps(3, 1);
    let mut report = Report::new("deploy", options.quick);
    report.method = vec![
        format!("deploy: {reps} rounds; each round times `hivemind app deploy` (a new app, 1 replica) and `ctr run -d` (a new container), order alternating"),
        format!("scale: {scale_reps} rounds; `hivemind app scale` 0→20 and 20→0 of one app, next to 20 `ctr run -d` / `ctr tasks rm -f` 8 at a time"),
        "wall clock of the command a user types, from start to exit; both return once the task runs; cleanup between rounds is not timed".to_owned(),
        "release agent in a namespace with the harness registry and a private containerd; the image is pulled once before timing".to_owned(),
        format!("agent binary: {}", hivemind_tests::util::hivemind_bin().display()),
    ];

    let node = SingleNode::start_with(&AgentOptions {
        log_filter: Some("info".to_owned()),
        insecure_registries: vec![SLOW_REGISTRY.to_owned()],
        ..AgentOptions::default()
    });
    let bench = Deploy { node: &node };
    bench.prepare();

    let mut table = Table::new(
        "deploy latency (ms, median of rounds)",
        &["hivemind", "ctr run -d"],
    );
    table.row(DEPLOY, "ms", Better::Lower);
    table.row(SCALE_UP, "ms", Better::Lower);
    table.row(SCALE_DOWN, "ms", Better::Lower);
    table.row(ROUND_TRIP, "ms", Better::Lower);

    // What starting each client and one round trip to its daemon cost, for reading the rest.
    interleave(reps, 2, |_, variant| {
        let start = Instant::now();
        let out = if variant == 0 {
            node.agent.cli(&["health"])
        } else {
            node.containerd.ctr(&["version"])
        };
        let elapsed = start.elapsed();
        // `health` exits 3 when the agent answers but reports itself degraded.
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "client round trip failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        table.rows[3].cells[variant].push(ms(elapsed));
    });

    interleave(reps, 2, |round, variant| {
        let elapsed = if variant == 0 {
            bench.hivemind_deploy(&format!("d{round}"))
        } else {
            bench.ctr_run(&format!("ctr-d{round}"))
        };
        table.rows[0].cells[variant].push(ms(elapsed));
    });

    ensure_ok(
        "deploy the fleet app with 0 replicas",
        &node.agent.cli(&[
            "app",
            "deploy",
            "--image",
            &node.image,
            "--name",
            "fleet",
            "--replicas",
            "0",
            "--stop-timeout",
            STOP_TIMEOUT,
        ]),
    );
    interleave(scale_reps, 2, |round, variant| {
        let (up, down) = if variant == 0 {
            bench.hivemind_scale()
        } else {
            bench.ctr_fleet(round)
        };
        table.rows[1].cells[variant].push(ms(up));
        table.rows[2].cells[variant].push(ms(down));
    });

    let beside = bench.scale_beside_a_slow_pull(scale_reps.max(3), &mut report);
    let ratio = table.ratio(DEPLOY, 1).unwrap_or(f64::NAN);
    let rounds = table.paired_ratios(DEPLOY, 1).unwrap_or_default();
    report.target(
        "deploy → running vs ctr run -d",
        "<= 1.50x",
        format!(
            "{}; {:.0} ms vs {:.0} ms",
            Report::ratio_got(&rounds, |r| r <= 1.5),
            table.median(DEPLOY, 0).unwrap_or(f64::NAN),
            table.median(DEPLOY, 1).unwrap_or(f64::NAN)
        ),
        ratio <= 1.5,
    );
    let up = table.median(SCALE_UP, 0).unwrap_or(f64::NAN);
    report.target(
        "scale 0→20",
        "< 5.0 s",
        format!("{:.2} s", up / 1e3),
        up < 5000.0,
    );
    report.notes = vec![
        "ratios are paired: the median over rounds of hivemind/ctr measured in the same round".to_owned(),
        "hivemind does more per container than `ctr run -d`: a store record written before and after (redb, fsync), a placement written to the store, its own network namespace with a veth pair, an address from IPAM and a datapath endpoint (about 50 ms: see the datapath bench's plumbing note), /etc/hosts, /etc/hostname and /etc/resolv.conf, a seccomp profile and Docker's capability set, stdout to a file, and a reconcile pass over every app".to_owned(),
        "20→0 stops every container with SIGTERM (then SIGKILL after a 1 s grace period, which httpd does not need) and removes it; `ctr tasks rm -f` sends SIGKILL at once, so that column is for information only".to_owned(),
    ];
    report.tables.extend([table, beside]);
    report
}

/// The slow registry's process, killed when the bench is done with it.
struct Proxy(std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Deploy<'a> {
    node: &'a SingleNode,
}

impl Deploy<'_> {
    fn ctr(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["-n", CTR_NS];
        all.extend_from_slice(args);
        self.node.containerd.ctr(&all)
    }

    /// Pulls the image for both sides and warms both paths up once (first-use costs of the
    /// snapshotter and the shim binary are not what we measure).
    fn prepare(&self) {
        // ctr pulls client-side, so it runs where the registry is: in the node's namespace.
        let socket = self.node.containerd.socket().display().to_string();
        let out = self.node.netns.run(
            "ctr",
            &[
                "--address",
                &socket,
                "-n",
                CTR_NS,
                "images",
                "pull",
                "--plain-http",
                &self.node.image,
            ],
        );
        ensure_ok("ctr images pull", &out);
        self.hivemind_deploy("warm");
        self.ctr_run("ctr-warm");
    }

    /// Times `hivemind app deploy` of a new app, checks its container runs, removes the app.
    fn hivemind_deploy(&self, name: &str) -> Duration {
        let start = Instant::now();
        let out = self.node.agent.cli(&[
            "app",
            "deploy",
            "--image",
            &self.node.image,
            "--name",
            name,
            "--stop-timeout",
            STOP_TIMEOUT,
        ]);
        let elapsed = start.elapsed();
        ensure_ok("hivemind app deploy", &out);
        let prefix = format!("{name}-");
        assert!(
            self.node
                .running_tasks()
                .iter()
                .any(|id| id.starts_with(&prefix)),
            "app {name} has no running task after deploy"
        );
        ensure_ok(
            "hivemind app rm",
            &self.node.agent.cli(&["app", "rm", "--name", name]),
        );
        elapsed
    }

    /// Times `ctr run -d` of a new container, checks it runs, removes it.
    fn ctr_run(&self, id: &str) -> Duration {
        let start = Instant::now();
        let out = self.ctr(&["run", "-d", &self.node.image, id]);
        let elapsed = start.elapsed();
        ensure_ok("ctr run -d", &out);
        assert!(
            self.ctr_running().iter().any(|t| t == id),
            "ctr container {id} is not running"
        );
        self.ctr_remove(id);
        elapsed
    }

    fn ctr_running(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.ctr(&["tasks", "ls"]).stdout)
            .lines()
            .skip(1)
            .filter(|line| line.split_whitespace().nth(2) == Some("RUNNING"))
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    fn ctr_remove(&self, id: &str) {
        ensure_ok("ctr tasks rm -f", &self.ctr(&["tasks", "rm", "-f", id]));
        ensure_ok("ctr containers rm", &self.ctr(&["containers", "rm", id]));
    }

    /// `hivemind app scale fleet` to 20 and back to 0: (up, down).
    fn hivemind_scale(&self) -> (Duration, Duration) {
        let fleet = FLEET.to_string();
        let scale = |replicas: &str| {
            let start = Instant::now();
            let out =
                self.node
                    .agent
                    .cli(&["app", "scale", "--name", "fleet", "--replicas", replicas]);
            let elapsed = start.elapsed();
            ensure_ok("hivemind app scale", &out);
            elapsed
        };
        let count = || {
            self.node
                .running_tasks()
                .iter()
                .filter(|id| id.starts_with("fleet-"))
                .count()
        };
        let up = scale(&fleet);
        assert_eq!(
            count(),
            FLEET as usize,
            "running fleet containers after scale up"
        );
        let down = scale("0");
        assert_eq!(count(), 0, "running fleet containers after scale down");
        (up, down)
    }

    /// Times `app scale` 0→1 of one app alone and while another app's deploy pulls through
    /// the slow registry (started first, still pulling when the scale returns).
    fn scale_beside_a_slow_pull(&self, rounds: usize, report: &mut Report) -> Table {
        let mut table = Table::new(
            "a concurrent slow pull (ms, median of rounds)",
            &["alone", "during another app's pull (about 5 s)"],
        );
        table.row(SCALE_BESIDE_PULL, "ms", Better::Lower);
        let _proxy = Proxy(
            self.node
                .netns
                .command("python3")
                .args(["-c", SLOW_PROXY, "5001", "127.0.0.1:5000", SLOW_REQUEST])
                .spawn()
                .expect("python3 runs the slow registry"),
        );
        std::thread::sleep(Duration::from_millis(300)); // the proxy binds
        let slow_image = self.node.image.replacen("127.0.0.1:5000", SLOW_REGISTRY, 1);
        ensure_ok(
            "deploy the app to scale, with 0 replicas",
            &self.node.agent.cli(&[
                "app",
                "deploy",
                "--image",
                &self.node.image,
                "--name",
                "beside",
                "--replicas",
                "0",
                "--stop-timeout",
                STOP_TIMEOUT,
            ]),
        );
        let scale = |replicas: &str| {
            let start = Instant::now();
            let out =
                self.node
                    .agent
                    .cli(&["app", "scale", "--name", "beside", "--replicas", replicas]);
            ensure_ok("hivemind app scale", &out);
            start.elapsed()
        };
        interleave(rounds, 2, |_, variant| {
            let elapsed = if variant == 0 {
                scale("1")
            } else {
                let mut pull = self.node.agent.cli_command(&[
                    "app",
                    "deploy",
                    "--image",
                    &slow_image,
                    "--name",
                    "slowpoke",
                    "--pull",
                    "--stop-timeout",
                    STOP_TIMEOUT,
                ]);
                let mut pulling = pull
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("hivemind app deploy");
                std::thread::sleep(Duration::from_secs(1)); // well into the pull
                let elapsed = scale("1");
                assert!(
                    pulling.try_wait().ok().flatten().is_none(),
                    "the slow pull ended before the scale did: slow it down"
                );
                let status = pulling.wait().expect("the slow deploy");
                assert!(
                    status.success(),
                    "the deploy through the slow registry failed"
                );
                ensure_ok(
                    "hivemind app rm slowpoke",
                    &self.node.agent.cli(&["app", "rm", "--name", "slowpoke"]),
                );
                elapsed
            };
            table.rows[0].cells[variant].push(ms(elapsed));
            ensure_ok(
                "scale back to 0",
                &self
                    .node
                    .agent
                    .cli(&["app", "scale", "--name", "beside", "--replicas", "0"]),
            );
        });
        let added = table.median(SCALE_BESIDE_PULL, 1).unwrap_or(f64::NAN)
            - table.median(SCALE_BESIDE_PULL, 0).unwrap_or(f64::NAN);
        report.target(
            "a slow pull delays another app's scale by",
            "< 100 ms",
            format!("{added:.0} ms (median with the pull in flight minus median alone)"),
            added < 100.0,
        );
        table
    }

    /// 20 `ctr run -d`, 8 at a time, then 20 `ctr tasks rm -f` + `containers rm`, 8 at a time.
    fn ctr_fleet(&self, round: usize) -> (Duration, Duration) {
        let ids: Vec<String> = (0..FLEET).map(|i| format!("ctr-f{round}-{i}")).collect();
        let parallel = |work: &(dyn Fn(&str) + Sync)| {
            let next = AtomicUsize::new(0);
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..PARALLEL {
                    scope.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(id) = ids.get(i) else { break };
                            work(id);
                        }
                    });
                }
            });
            start.elapsed()
        };
        let up = parallel(&|id| {
            ensure_ok(
                "ctr run -d",
                &self.ctr(&["run", "-d", &self.node.image, id]),
            );
        });
        let running = self.ctr_running();
        assert!(
            ids.iter().all(|id| running.contains(id)),
            "not every ctr fleet container runs"
        );
        let down = parallel(&|id| self.ctr_remove(id));
        (up, down)
    }
}
