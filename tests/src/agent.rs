//! `hivemind agent` running inside a network namespace, with its own data dir and socket.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    Containerd, Netns,
    process::Process,
    util::{hivemind_bin, run, unique, wait_for},
};

/// How to start an agent; `Default` gives a fresh node name and nothing else.
#[derive(Debug, Default, Clone)]
pub struct AgentOptions {
    pub node_name: Option<String>,
    /// containerd socket; defaults to the given [`Containerd`]'s.
    pub containerd_socket: Option<PathBuf>,
    pub insecure_registries: Vec<String>,
    /// `--api-addr` (default `127.0.0.1:3000`, inside the agent's namespace).
    pub api_addr: Option<String>,
    pub extra_args: Vec<String>,
    /// Extra environment variables of the agent process.
    pub env: Vec<(String, String)>,
    /// `HIVEMIND_LOG`; defaults to `info,hivemind_agent=debug` (tests want the detail,
    /// benchmarks want the default `info`).
    pub log_filter: Option<String>,
}

#[derive(Debug)]
pub struct Agent {
    // Drop order: stop the process, then remove pins, then the data dir.
    process: Option<Process>,
    node_name: String,
    netns: String,
    socket: PathBuf,
    dir: TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_filter: String,
}

impl Agent {
    /// Starts an agent in `netns` and waits until it answers `hivemind health`.
    pub fn start(netns: &Netns, containerd: &Containerd, options: &AgentOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hm-agent-")
            .tempdir()
            .expect("agent dir");
        let node_name = options.node_name.clone().unwrap_or_else(|| unique("node"));
        let socket = dir.path().join("agent.sock");
        let containerd_socket = options
            .containerd_socket
            .clone()
            .unwrap_or_else(|| containerd.socket().to_owned());
        let mut args = vec![
            "agent".to_owned(),
            "--data-dir".to_owned(),
            dir.path().join("data").display().to_string(),
            "--socket".to_owned(),
            socket.display().to_string(),
            "--node-name".to_owned(),
            node_name.clone(),
            "--containerd-socket".to_owned(),
            containerd_socket.display().to_string(),
            "--api-addr".to_owned(),
            options
                .api_addr
                .clone()
                .unwrap_or_else(|| "127.0.0.1:3000".to_owned()),
        ];
        for registry in &options.insecure_registries {
            args.push("--insecure-registry".to_owned());
            args.push(registry.clone());
        }
        args.extend(options.extra_args.iter().cloned());
        let mut agent = Self {
            process: None,
            node_name,
            netns: netns.name().to_owned(),
            socket,
            dir,
            args,
            env: options.env.clone(),
            log_filter: options
                .log_filter
                .clone()
                .unwrap_or_else(|| "info,hivemind_agent=debug".to_owned()),
        };
        agent.launch();
        agent
    }

    fn launch(&mut self) {
        let log = self.dir.path().join(format!("agent-{}.log", unique("")));
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(hivemind_bin());
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HIVEMIND_LOG", &self.log_filter);
        self.process = Some(Process::spawn("hivemind agent", &mut command, &log));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        wait_for(
            "the agent to answer health",
            Duration::from_secs(30),
            || {
                let process = self.process.as_mut().expect("agent started");
                if let Some(status) = process.exited() {
                    panic!("hivemind agent exited ({status}):\n{}", process.log());
                }
                let out = self.cli(&["health"]);
                // 0: healthy; 3: answered but degraded. Both mean the agent is serving.
                matches!(out.status.code(), Some(0 | 3)).then_some(())
            },
        );
    }

    /// Stops the agent (SIGTERM) and starts it again with the same arguments and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.process
            .take()
            .map(|mut p| p.stop(Duration::from_secs(20)))
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the agent again after [`Agent::stop`] or [`Agent::kill`].
    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "agent still running");
        self.launch();
    }

    /// Sets (or with `None` removes) an environment variable of the next (re)start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Waits up to `timeout` for the agent to exit by itself (e.g. at a crash point); true if
    /// it did. A running agent is left running.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let started = std::time::Instant::now();
        loop {
            let Some(process) = self.process.as_mut() else {
                return true;
            };
            if process.exited().is_some() {
                self.process = None;
                return true;
            }
            if started.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Adds arguments for the next (re)start, e.g. `--cluster-init`.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
    }

    /// The pid of the etcd member this agent runs (from `<data-dir>/etcd.pid`), if it runs.
    pub fn etcd_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.data_dir().join("etcd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = self.data_dir().join("etcd").display().to_string();
        (crate::util::pid_alive(pid) && String::from_utf8_lossy(&cmdline).contains(&ours))
            .then_some(pid)
    }

    /// SIGKILLs the agent's etcd member (it outlives a killed agent by design).
    pub fn kill_etcd(&self) {
        if let Some(pid) = self.etcd_pid() {
            crate::util::kill_pid(pid);
        }
    }

    /// The agent's etcd log.
    pub fn etcd_log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("etcd.log")).unwrap_or_default()
    }

    /// `hivemind ARGS` with extra environment variables.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(hivemind_bin());
        command
            .arg("--addr")
            .arg(format!("unix:{}", self.socket.display()))
            .args(args)
            .env_remove("HIVEMIND_TOKEN");
        for (key, value) in env {
            command.env(key, value);
        }
        run(&mut command)
    }

    /// `hivemind ARGS` with `input` on its standard input (a password, a secret's value).
    pub fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(hivemind_bin())
            .arg("--addr")
            .arg(format!("unix:{}", self.socket.display()))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run hivemind");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("hivemind output")
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The agent's log so far (all runs).
    pub fn log(&self) -> String {
        let mut logs: Vec<_> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        logs.iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// `/sys/fs/bpf/hivemind/<node>`.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf/hivemind").join(&self.node_name)
    }

    /// Runs `hivemind --addr unix:SOCKET ARGS` (from the root namespace: the socket is a file).
    pub fn cli(&self, args: &[&str]) -> Output {
        run(&mut self.cli_command(args))
    }

    /// `hivemind ARGS` against this agent, to be run or spawned by the caller.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(hivemind_bin());
        command
            .arg("--addr")
            .arg(format!("unix:{}", self.socket.display()))
            .args(args);
        command
    }

    /// `hivemind ARGS` left running (`-f` commands): the process, and its stdout's lines as
    /// they come. Kill the process when done.
    pub fn cli_lines(
        &self,
        args: &[&str],
    ) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
        use std::io::BufRead as _;
        let mut child = Command::new(hivemind_bin())
            .arg("--addr")
            .arg(format!("unix:{}", self.socket.display()))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("hivemind");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    /// `hivemind ... ARGS` that must succeed; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "hivemind {args:?} failed ({}):\nstdout: {}\nstderr: {}\nagent log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `hivemind -o json ... ARGS`, parsed.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.cli_ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|err| panic!("hivemind {args:?}: not JSON ({err}):\n{out}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        // A stopped agent stops its etcd member; one that was killed leaves it running.
        self.kill_etcd();
        let _ = std::fs::remove_dir_all(self.pin_dir());
        // What the agent leaves mounted for containers that outlive it (their secrets' tmpfs),
        // so the data dir can go.
        for mount in crate::util::mounts_under(self.dir.path()).iter().rev() {
            let _ = Command::new("umount").args(["-l", mount]).status();
        }
    }
}
