//! `hivemind app exec --container-id ID [-i] [-t] -- CMD...`: a process in a running
//! container, as the container's user with its environment and working directory (or the
//! ones asked for), its output on ours, its exit code ours; a terminal for `-t`, driven
//! through a real pseudo-terminal (`script`) here, resized as ours is; containers on other
//! nodes of a cluster too.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use hivemind_tests::{
    AgentOptions, SingleNode,
    apps::{self, deploy_ok},
    cluster::{Underlay, form_three},
    image,
    util::{hivemind_bin, stderr, stdout, wait_for},
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The accounts variant as user www (uid 1000, in staff and web, home /var/www), serving on
/// 8080 (a user other than root may not bind port 80), from /www.
const WWW: &str = r#"{"Env":["PATH=/bin","PORT=8080","MODE=prod"],"Cmd":["/bin/entrypoint"],"ExposedPorts":{"8080/tcp":{}},"User":"www","WorkingDir":"/www"}"#;

fn running(node: &SingleNode, image: &str, name: &str) -> String {
    deploy_ok(&node.agent, image, name, &["--health-tcp", "8080"]);
    let c = wait_for(&format!("{name} running"), TIMEOUT, || {
        apps::containers(&node.agent, name)
            .into_iter()
            .find(|c| c["state"] == "running")
    });
    apps::id(&c)
}

/// A node running one replica of the accounts image as www; its container id.
fn shell_node() -> (SingleNode, String) {
    let node = SingleNode::start();
    let layout = image::oci_layout_configured("exec-www", "accounts", WWW);
    let image = node.registry.push_image(&layout, "hivemind/exec-www:1");
    let id = running(&node, &image, "shell");
    (node, id)
}

/// `hivemind app exec --container-id ID EXTRA... -- COMMAND...`.
fn exec(node: &SingleNode, id: &str, extra: &[&str], command: &[&str]) -> Output {
    let mut args = vec!["app", "exec", "--container-id", id];
    args.extend(extra);
    args.push("--");
    args.extend(command);
    node.agent.cli(&args)
}

/// The command lines running in container `id` (from `ctr task ps`), each once: httpd's
/// children for a request look like httpd and change nothing here.
fn commands(node: &SingleNode, id: &str) -> BTreeSet<String> {
    node.containerd
        .ctr_ok(&["-n", apps::CONTAINERD_NS, "task", "ps", id])
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|cmdline| {
            String::from_utf8_lossy(&cmdline)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .collect()
}

#[test]
fn exec_runs_as_the_container_and_passes_output_and_exit_code() {
    let (node, id) = shell_node();
    let exec = |extra: &[&str], command: &[&str]| exec(&node, &id, extra, command);

    // Output on stdout and stderr as the process wrote them; its exit code is ours.
    let out = exec(&[], &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");

    // The container's user, groups, environment and working directory.
    let out = exec(&[], &["sh", "-c", "id; echo $MODE $HOME; pwd"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "uid=1000(www) gid=1000(www) groups=50(staff),2000(web)\nprod /var/www\n/www\n"
    );
    // ... or the ones asked for.
    let out = exec(
        &["-u", "root", "-e", "MODE=debug", "-w", "/tmp"],
        &["sh", "-c", "id -u; echo $MODE $HOME; pwd"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0\ndebug /root\n/tmp\n");

    // -i: our stdin is its stdin, to the end.
    let out = node.agent.cli_stdin(
        &["app", "exec", "-i", "--container-id", &id, "--", "wc", "-c"],
        &vec![b'x'; 200_000],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "200000");
    // Without -i it reads nothing.
    let out = exec(&[], &["cat"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");

    // A process killed by a signal: 128 + its number, as a shell reports it.
    let out = exec(&[], &["sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
}

/// What cannot run says why, and leaves no process and no pipes behind.
#[test]
fn exec_says_why_it_cannot_run_and_leaves_nothing_behind() {
    let (node, id) = shell_node();
    let exec = |extra: &[&str], command: &[&str]| exec(&node, &id, extra, command);
    let before = commands(&node, &id);
    for (extra, command, needle) in [
        (&[][..], &["no-such-program"][..], "no-such-program"),
        (&["-u", "nobody"][..], &["id"][..], "user \"nobody\""),
        (&["-e", "1X=y"][..], &["id"][..], "1X=y"),
        (&["-w", "relative"][..], &["id"][..], "relative"),
    ] {
        let out = exec(extra, command);
        assert!(!out.status.success(), "{extra:?} {command:?} ran");
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
    let out = node
        .agent
        .cli(&["app", "exec", "--container-id", "nope", "--", "id"]);
    assert!(
        stderr(&out).contains("no container nope"),
        "{}",
        stderr(&out)
    );
    let out = node.agent.cli(&["app", "exec", "--container-id", &id]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a command is required (a usage error)"
    );
    let out = node
        .agent
        .cli(&["app", "exec", "-it", "--container-id", &id, "--", "sh"]);
    assert!(
        stderr(&out).contains("the input is not a terminal"),
        "{}",
        stderr(&out)
    );
    assert_eq!(commands(&node, &id), before, "the container's processes");
    let dir = node.agent.data_dir().join("containers").join(&id);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("the container's directory")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.starts_with("exec-"))
        .collect();
    assert!(
        left.is_empty(),
        "exec pipes left in {}: {left:?}",
        dir.display()
    );
}

#[test]
fn exec_with_a_terminal_and_a_caller_that_goes_away() {
    let (node, id) = shell_node();
    // A caller that goes away takes its process with it.
    let mut caller = Command::new(hivemind_bin())
        .arg("--addr")
        .arg(format!("unix:{}", node.agent.socket().display()))
        .args(["app", "exec", "--container-id", &id, "--", "sleep", "1000"])
        .spawn()
        .expect("hivemind");
    wait_for("the exec'd sleep", TIMEOUT, || {
        commands(&node, &id).contains("sleep 1000").then_some(())
    });
    let _ = caller.kill();
    let _ = caller.wait();
    let deadline = Instant::now() + TIMEOUT;
    while commands(&node, &id).contains("sleep 1000") {
        assert!(
            Instant::now() < deadline,
            "the exec'd sleep outlived its caller; the agent's log:\n{}",
            node.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // -it on a real terminal: a pty of its own, the size of ours and following it, keys
    // passed as typed, the exit code of the shell.
    let mut session = Terminal::start(&format!(
        "stty rows 40 cols 100; exec {} --addr unix:{} app exec -it --container-id {id} -- sh",
        hivemind_bin().display(),
        node.agent.socket().display(),
    ));
    session.type_line("tty; stty size");
    session.expect("/dev/pts/");
    session.expect("40 100");
    session.resize(50, 132);
    session.type_line("stty size");
    session.expect("50 132");
    session.type_line("exit 5");
    assert_eq!(session.wait(), Some(5));
}

#[test]
fn exec_reaches_containers_on_other_nodes() {
    const REGISTRY: &str = "192.0.2.11:5000";
    let underlay = Underlay::new();
    let options = AgentOptions {
        insecure_registries: vec![REGISTRY.to_owned()],
        ..AgentOptions::default()
    };
    let (n1, _registry, image, n2, _n3) = form_three(&underlay, &options, REGISTRY);
    deploy_ok(&n1.agent, &image, "web", &["--replicas", "3"]);
    let on_n1 = wait_for("a running replica on node 1", TIMEOUT, || {
        apps::containers(&n1.agent, "web")
            .into_iter()
            .find(|c| c["node"] == n1.name() && c["state"] == "running")
    });
    let id = apps::id(&on_n1);

    // From node 2, in the container on node 1: its hostname, stdin relayed, the exit code.
    let out = n2.agent.cli_stdin(
        &[
            "app",
            "exec",
            "-i",
            "--container-id",
            &id,
            "--",
            "sh",
            "-c",
            "hostname; cat; exit 4",
        ],
        b"through node 2\n",
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{id}\nthrough node 2\n"));
}

/// `script` running a command on a pseudo-terminal of its own, fed keys through its stdin,
/// its output read as it comes.
struct Terminal {
    child: std::process::Child,
    output: mpsc::Receiver<u8>,
    seen: Vec<u8>,
}

impl Terminal {
    fn start(command: &str) -> Self {
        let mut child = Command::new("script")
            .args(["-q", "-e", "-c", command, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("script (util-linux)");
        let mut out = child.stdout.take().expect("stdout");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while out.read_exact(&mut byte).is_ok() {
                if tx.send(byte[0]).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            output,
            seen: Vec::new(),
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\r").as_bytes())
            .expect("type");
        stdin.flush().expect("type");
    }

    /// Waits until `text` appears in what the terminal showed since the last match.
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(at) = String::from_utf8_lossy(&self.seen).find(text) {
                self.seen.drain(..at + text.len());
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(byte) => self.seen.push(byte),
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{text:?} never appeared; the terminal showed {:?}",
                        String::from_utf8_lossy(&self.seen)
                    )
                }
            }
        }
    }

    /// Resizes the terminal `hivemind` runs on, as a terminal window does (the kernel sends
    /// it SIGWINCH).
    fn resize(&mut self, rows: u32, cols: u32) {
        let tty = std::fs::read_link(format!("/proc/{}/fd/0", self.child.id()))
            .ok()
            .filter(|p| p.starts_with("/dev/pts"));
        // `script` execs the shell, which execs hivemind: the child's child holds the pty.
        let tty = tty.or_else(|| {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id()))
                    .unwrap_or_default();
            children.split_whitespace().find_map(|pid| {
                std::fs::read_link(format!("/proc/{pid}/fd/0"))
                    .ok()
                    .filter(|p| p.starts_with("/dev/pts"))
            })
        });
        let tty = tty.expect("the pseudo-terminal hivemind runs on");
        let out = Command::new("stty")
            .arg("-F")
            .arg(&tty)
            .args(["rows", &rows.to_string(), "cols", &cols.to_string()])
            .output()
            .expect("stty");
        assert!(out.status.success(), "{}", stderr(&out));
    }

    fn wait(mut self) -> Option<i32> {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the terminal session did not end");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
