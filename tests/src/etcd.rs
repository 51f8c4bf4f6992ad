//! An etcd member (Debian's `etcd` 3.4) with its own data dir, in the root namespace or in a
//! [`Netns`], alone or as part of a cluster.

use std::{path::Path, process::Command, time::Duration};

use tempfile::TempDir;

use crate::{
    Netns,
    process::Process,
    util::{free_port, run, unique, wait_for},
};

/// How to start a member. `Default` is a one-member cluster on 127.0.0.1 with free ports.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Member name [default: a unique one].
    pub name: Option<String>,
    /// Address the member listens on, for clients and peers [default: 127.0.0.1].
    pub listen_ip: Option<String>,
    /// [default: a free port in the root namespace; 2379 inside a namespace]
    pub client_port: Option<u16>,
    /// [default: a free port in the root namespace; 2380 inside a namespace]
    pub peer_port: Option<u16>,
    /// `--initial-cluster`, `NAME=http://IP:PEER_PORT,...` [default: this member alone].
    pub initial_cluster: Option<String>,
    /// `--initial-cluster-token`; members of one cluster must agree [default: unique].
    pub cluster_token: Option<String>,
    /// Join a running cluster (`--initial-cluster-state existing`, after `member add`).
    pub join_existing: bool,
    /// Return right after starting the process instead of waiting for `/health`: a member of a
    /// cluster that is still forming serves nothing until enough members run. Call
    /// [`Etcd::wait_healthy`] once they all do.
    pub no_wait: bool,
    pub extra_args: Vec<String>,
}

#[derive(Debug)]
pub struct Etcd {
    // Field order is drop order: stop the member before removing its directory.
    process: Option<Process>,
    name: String,
    client_url: String,
    peer_url: String,
    /// `/run/netns/NAME` when the member runs inside a namespace.
    netns: Option<String>,
    args: Vec<String>,
    launches: u32,
    dir: TempDir,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Etcd {
    /// A one-member cluster on 127.0.0.1 of the root namespace, healthy when this returns.
    pub fn start() -> Self {
        Self::start_with(None, &EtcdOptions::default())
    }

    /// A member inside `netns` (listening on `options.listen_ip`, default 127.0.0.1 there).
    pub fn start_in(netns: &Netns, options: &EtcdOptions) -> Self {
        Self::start_with(Some(netns), options)
    }

    pub fn start_with(netns: Option<&Netns>, options: &EtcdOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hm-etcd-")
            .tempdir()
            .expect("etcd temp dir");
        let name = options.name.clone().unwrap_or_else(|| unique("etcd"));
        let ip = options.listen_ip.as_deref().unwrap_or("127.0.0.1");
        let default_port = |in_ns| if netns.is_some() { in_ns } else { free_port() };
        let client_port = options.client_port.unwrap_or_else(|| default_port(2379));
        let peer_port = options.peer_port.unwrap_or_else(|| default_port(2380));
        let client_url = format!("http://{ip}:{client_port}");
        let peer_url = format!("http://{ip}:{peer_port}");
        let initial_cluster = options
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{name}={peer_url}"));
        let token = options
            .cluster_token
            .clone()
            .unwrap_or_else(|| unique("hm-etcd-"));
        let state = if options.join_existing {
            "existing"
        } else {
            "new"
        };
        let data_dir = dir.path().join("data").display().to_string();
        let fixed: [&str; 22] = [
            "--name",
            &name,
            "--data-dir",
            &data_dir,
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &initial_cluster,
            "--initial-cluster-token",
            &token,
            "--initial-cluster-state",
            state,
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ];
        let mut args: Vec<String> = fixed.map(str::to_owned).to_vec();
        args.extend(options.extra_args.iter().cloned());
        let mut etcd = Self {
            process: None,
            name,
            client_url,
            peer_url,
            netns: netns.map(Netns::path),
            args,
            launches: 0,
            dir,
        };
        etcd.launch();
        if !options.no_wait {
            etcd.wait_healthy(START_TIMEOUT);
        }
        etcd
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(path) => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--net={path}")).arg("--").arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn launch(&mut self) {
        let mut command = self.command("etcd");
        command.args(&self.args);
        // One log per run, so a restart doesn't erase what happened before it.
        self.launches += 1;
        let log = match self.launches {
            1 => self.dir.path().join("etcd.log"),
            n => self.dir.path().join(format!("etcd.{n}.log")),
        };
        self.process = Some(Process::spawn("etcd", &mut command, &log));
    }

    /// `http://IP:PORT`, for clients.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// The client URL as the store's endpoint list.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.client_url.clone()]
    }

    pub fn peer_url(&self) -> &str {
        &self.peer_url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("etcd running").pid()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        self.process.as_ref().map(Process::log).unwrap_or_default()
    }

    /// True when the member answers `GET /health` (asked from inside its namespace) with
    /// `"health":"true"`: it has a leader and serves requests.
    pub fn is_healthy(&self) -> bool {
        let out = run(self
            .command("curl")
            .args(["-s", "--max-time", "2"])
            .arg(format!("{}/health", self.client_url)));
        String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\"")
    }

    fn check_running(&mut self) {
        let process = self.process.as_mut().expect("etcd running");
        if let Some(status) = process.exited() {
            panic!("etcd {} exited ({status}):\n{}", self.name, process.log());
        }
    }

    pub fn wait_healthy(&mut self, timeout: Duration) {
        let what = format!("etcd {} to be healthy", self.name);
        wait_for(&what, timeout, || {
            self.check_running();
            self.is_healthy().then_some(())
        });
    }

    /// SIGSTOP: the member keeps its connections but answers nothing (a hung server).
    pub fn freeze(&self) {
        self.process
            .as_ref()
            .expect("etcd running")
            .signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        self.process
            .as_ref()
            .expect("etcd running")
            .signal(libc::SIGCONT);
    }

    /// SIGKILL, as a crash would. [`restart`](Self::restart) brings it back.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the member again with the same data dir, name and addresses (killing it first
    /// if it runs), and waits until it is healthy.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
        self.wait_healthy(START_TIMEOUT);
    }
}
