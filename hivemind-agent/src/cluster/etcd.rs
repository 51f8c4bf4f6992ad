//! The node's etcd member: Debian's `etcd` binary run and supervised by the agent.
//!
//! The member is a child process in its own process group, with its output in
//! `<data-dir>/etcd.log` and its pid in `<data-dir>/etcd.pid`. A supervisor thread restarts it
//! when it dies (with a growing pause). The agent stops it when it shuts down; when the agent
//! dies or re-executes itself (after a join), the member keeps running and the next agent
//! adopts it through the pid file, so the cluster does not lose a voter to an agent restart.
//!
//! Client and peer traffic use TLS with the node's certificate, and etcd requires a client
//! certificate from the cluster CA on both (`--client-cert-auth`, `--peer-client-cert-auth`).

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    net::Ipv4Addr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::paths::DataDir;

/// etcd's client port on every node.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer (raft) port on every node.
pub const PEER_PORT: u16 = 2380;
/// The etcd binary: `$HIVEMIND_ETCD_BIN`, else `etcd` on `PATH`.
const DEFAULT_BINARY: &str = "etcd";
/// How long a stop waits for etcd to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the supervisor checks that the member runs.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot start etcd ({binary}); is the etcd-server package installed?")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd exited right after starting ({status}): {summary}")]
    Exited {
        status: String,
        /// The error etcd logged last.
        summary: String,
        /// The end of its log.
        tail: String,
    },
}

/// Whether the member starts a new cluster or joins a running one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    New,
    Existing,
}

/// Everything `etcd` is started with.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub name: String,
    pub node_ip: Ipv4Addr,
    /// `--initial-cluster`: `name=https://ip:2380,...` (only read on the member's first start).
    pub initial_cluster: String,
    pub initial_state: InitialState,
    /// `--initial-cluster-token`: the cluster id.
    pub cluster_token: String,
    pub data_dir: DataDir,
}

pub fn peer_url(ip: Ipv4Addr) -> String {
    format!("https://{ip}:{PEER_PORT}")
}

pub fn client_url(ip: Ipv4Addr) -> String {
    format!("https://{ip}:{CLIENT_PORT}")
}

/// The local member's client URL, as the node's own store uses it.
pub fn local_client_url() -> String {
    format!("https://127.0.0.1:{CLIENT_PORT}")
}

impl MemberConfig {
    fn args(&self) -> Vec<String> {
        let pki = self.data_dir.pki();
        let file = |name: &str| pki.join(name).display().to_string();
        let (ca, cert, key) = (file("ca.crt"), file("node.crt"), file("node.key"));
        let state = match self.initial_state {
            InitialState::New => "new",
            InitialState::Existing => "existing",
        };
        let mut args: Vec<String> = [
            "--name",
            &self.name,
            "--data-dir",
            &self.data_dir.etcd().display().to_string(),
            "--listen-client-urls",
            &format!("{},{}", client_url(self.node_ip), local_client_url()),
            "--advertise-client-urls",
            &client_url(self.node_ip),
            "--listen-peer-urls",
            &peer_url(self.node_ip),
            "--initial-advertise-peer-urls",
            &peer_url(self.node_ip),
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            &self.cluster_token,
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca,
            "--peer-cert-file",
            &cert,
            "--peer-key-file",
            &key,
            "--peer-trusted-ca-file",
            &ca,
            // History older than an hour is dropped (watches resume from newer revisions).
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        .map(str::to_owned)
        .to_vec();
        args.push("--client-cert-auth".to_owned());
        args.push("--peer-client-cert-auth".to_owned());
        args
    }
}

fn binary() -> String {
    std::env::var("HIVEMIND_ETCD_BIN").unwrap_or_else(|_| DEFAULT_BINARY.to_owned())
}

/// The running member. Stop it with [`EtcdMember::stop`]; dropping it leaves etcd running
/// (the agent re-executing itself adopts it again).
#[derive(Debug)]
pub struct EtcdMember {
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<()>>,
    data_dir: DataDir,
}

#[derive(Debug)]
struct Shared {
    config: MemberConfig,
    pid: AtomicU32,
    stopping: AtomicBool,
    /// Exits seen since the start, and the last exit status.
    exits: AtomicU32,
    last_exit: Mutex<String>,
}

impl EtcdMember {
    /// Adopts the member a previous agent left running (pid file, same data dir), or starts
    /// one. Returns once the process runs; [`EtcdMember::check_running`] tells whether it
    /// stayed up.
    pub fn start(config: MemberConfig) -> Result<Self, EtcdError> {
        let data_dir = config.data_dir.clone();
        let pid = match adoptable(&data_dir) {
            Some(pid) => {
                tracing::info!(pid, "adopting the running etcd member");
                pid
            }
            None => spawn(&config)?,
        };
        let shared = Arc::new(Shared {
            config,
            pid: AtomicU32::new(pid),
            stopping: AtomicBool::new(false),
            exits: AtomicU32::new(0),
            last_exit: Mutex::new(String::new()),
        });
        let supervisor = std::thread::Builder::new()
            .name("etcd-supervisor".into())
            .spawn({
                let shared = shared.clone();
                move || supervise(&shared)
            })
            .map_err(|source| EtcdError::Spawn {
                binary: "the etcd supervisor thread".into(),
                source,
            })?;
        Ok(Self {
            shared,
            supervisor: Some(supervisor),
            data_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.shared.pid.load(Ordering::Relaxed)
    }

    /// Fails if etcd exited since it was started (it is being restarted, but a member that
    /// dies at once usually has a configuration problem: say what its log says).
    pub fn check_running(&self) -> Result<(), EtcdError> {
        if self.shared.exits.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let status = self
            .shared
            .last_exit
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let tail = log_tail(&self.data_dir.etcd_log(), 40);
        Err(EtcdError::Exited {
            status,
            summary: last_error(&tail)
                .or_else(|| {
                    tail.lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .map(|l| l.chars().take(300).collect())
                })
                .unwrap_or_else(|| "it wrote nothing to its log".to_owned()),
            tail,
        })
    }

    /// Stops etcd: SIGTERM, up to 10 s, then SIGKILL. Removes the pid file.
    pub fn stop(mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.supervisor.take() {
            let _ = thread.join();
        }
        let pid = self.pid();
        terminate(pid, STOP_GRACE);
        let _ = fs::remove_file(self.data_dir.etcd_pid());
        tracing::info!(pid, "etcd stopped");
    }

    /// Stops etcd at once (SIGKILL), for undoing a join that failed.
    pub fn kill(mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.supervisor.take() {
            let _ = thread.join();
        }
        terminate(self.pid(), Duration::ZERO);
        let _ = fs::remove_file(self.data_dir.etcd_pid());
    }

    /// Leaves etcd running without supervision (before the agent re-executes itself; the new
    /// agent adopts it).
    pub fn detach(mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.supervisor.take() {
            let _ = thread.join();
        }
    }
}

/// Kills whatever member the pid file names (an interrupted init or join left it).
pub fn kill_leftover(data_dir: &DataDir) {
    if let Some(pid) = adoptable(data_dir) {
        tracing::info!(pid, "stopping a leftover etcd member");
        terminate(pid, STOP_GRACE);
    }
    let _ = fs::remove_file(data_dir.etcd_pid());
}

/// The pid in the pid file, if that process is an etcd with our data dir.
fn adoptable(data_dir: &DataDir) -> Option<u32> {
    let pid: u32 = fs::read_to_string(data_dir.etcd_pid())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = data_dir.etcd().display().to_string();
    let is_etcd = args
        .first()
        .is_some_and(|a| Path::new(&*String::from_utf8_lossy(a)).ends_with("etcd"));
    let same_dir = args
        .windows(2)
        .any(|w| w[0] == b"--data-dir" && w[1] == ours.as_bytes());
    (is_etcd && same_dir && alive(pid)).then_some(pid)
}

fn spawn(config: &MemberConfig) -> Result<u32, EtcdError> {
    let data_dir = &config.data_dir;
    let log_path = data_dir.etcd_log();
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| EtcdError::Write { path, source }
    };
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(write_error(&log_path))?;
    let err_log = log.try_clone().map_err(write_error(&log_path))?;
    let binary = binary();
    let child = Command::new(&binary)
        .args(config.args())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        // Its own process group: a Ctrl-C meant for the agent must not reach etcd directly;
        // the agent stops it in order.
        .process_group(0)
        .spawn()
        .map_err(|source| EtcdError::Spawn {
            binary: binary.clone(),
            source,
        })?;
    let pid = child.id();
    // The supervisor reaps it with waitpid; the handle is not needed.
    drop(child);
    let pid_path = data_dir.etcd_pid();
    fs::write(&pid_path, format!("{pid}\n")).map_err(write_error(&pid_path))?;
    tracing::info!(pid, log = %log_path.display(), "etcd started");
    Ok(pid)
}

fn supervise(shared: &Shared) {
    let mut pause = Duration::from_secs(1);
    let mut started = Instant::now();
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let pid = shared.pid.load(Ordering::Relaxed);
        if let Some(status) = exited(pid) {
            if shared.stopping.load(Ordering::Relaxed) {
                return;
            }
            shared.exits.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = shared.last_exit.lock() {
                last.clone_from(&status);
            }
            // A member that ran for a while starts over with a short pause.
            if started.elapsed() > Duration::from_secs(60) {
                pause = Duration::from_secs(1);
            }
            tracing::warn!(pid, %status, "etcd exited; restarting it in {pause:?}");
            let deadline = Instant::now() + pause;
            while Instant::now() < deadline {
                if shared.stopping.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(CHECK_INTERVAL);
            }
            pause = (pause * 2).min(MAX_RESTART_PAUSE);
            match spawn(&shared.config) {
                Ok(pid) => {
                    shared.pid.store(pid, Ordering::Relaxed);
                    started = Instant::now();
                }
                Err(err) => tracing::error!("restarting etcd: {err}"),
            }
        }
        std::thread::sleep(CHECK_INTERVAL);
    }
}

/// `Some(status)` once `pid` is gone: reaped if it is our child, else no longer alive.
fn exited(pid: u32) -> Option<String> {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return Some("bad pid".into());
    };
    let mut status = 0;
    // SAFETY: waitpid(2) with WNOHANG only writes the status integer we pass.
    let rc = unsafe { libc::waitpid(raw, &raw mut status, libc::WNOHANG) };
    if rc == raw {
        return Some(if libc::WIFEXITED(status) {
            format!("exit code {}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            "stopped".into()
        });
    }
    if rc == 0 {
        return None; // our child, still running
    }
    // Not our child (adopted after an agent crash): watch it through /proc.
    (!alive(pid)).then(|| "gone".to_owned())
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) takes plain integers.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// SIGTERM, wait up to `grace`, SIGKILL; reaps it if it is our child.
fn terminate(pid: u32, grace: Duration) {
    if pid == 0 {
        return;
    }
    if !grace.is_zero() {
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if exited(pid).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(pid, "etcd ignored SIGTERM for {grace:?}; killing it");
    }
    signal(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && exited(pid).is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last error etcd logged (its zap logger writes JSON lines: `msg` and `error`).
fn last_error(log: &str) -> Option<String> {
    log.lines().rev().find_map(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        let level = entry["level"].as_str()?;
        if !matches!(level, "fatal" | "panic" | "error") {
            return None;
        }
        let msg = entry["msg"].as_str().unwrap_or("error");
        Some(match entry["error"].as_str() {
            Some(error) => format!("{msg}: {error}"),
            None => msg.to_owned(),
        })
    })
}

/// The last `lines` lines of a log file (at most its last 16 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 << 10)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_use_tls_and_client_certs_everywhere() {
        let config = MemberConfig {
            name: "n1".into(),
            node_ip: Ipv4Addr::new(192, 0, 2, 1),
            initial_cluster: "n1=https://192.0.2.1:2380".into(),
            initial_state: InitialState::New,
            cluster_token: "abc".into(),
            data_dir: DataDir::new("/var/lib/hivemind"),
        };
        let args = config.args().join(" ");
        for expected in [
            "--listen-client-urls https://192.0.2.1:2379,https://127.0.0.1:2379",
            "--advertise-client-urls https://192.0.2.1:2379",
            "--listen-peer-urls https://192.0.2.1:2380",
            "--initial-cluster-state new",
            "--data-dir /var/lib/hivemind/etcd",
            "--trusted-ca-file /var/lib/hivemind/pki/ca.crt",
            "--peer-trusted-ca-file /var/lib/hivemind/pki/ca.crt",
            "--client-cert-auth",
            "--peer-client-cert-auth",
        ] {
            assert!(args.contains(expected), "{expected:?} missing from {args}");
        }
        assert!(!args.contains("http://"), "no plain-text URL: {args}");
    }

    #[test]
    fn the_last_error_is_found_in_the_log() {
        let log = r#"{"level":"info","msg":"starting"}
{"level":"fatal","ts":1,"msg":"listener failed","error":"listen tcp 192.0.2.2:2380: bind: address already in use"}
not json"#;
        assert_eq!(
            last_error(log).as_deref(),
            Some("listener failed: listen tcp 192.0.2.2:2380: bind: address already in use")
        );
        assert_eq!(last_error("{\"level\":\"info\",\"msg\":\"ok\"}"), None);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("etcd.log");
        fs::write(&path, "a\nb\nc\nd\n").expect("write");
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }
}
