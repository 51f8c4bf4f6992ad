//! A private containerd: its own config, root, state and socket in a temporary directory.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    process::Process,
    util::{check, mounts_under, pid_alive, run, wait_for},
};

#[derive(Debug)]
pub struct Containerd {
    // Field order is drop order: stop the daemon before removing its directory.
    process: Option<Process>,
    socket: PathBuf,
    /// Where `containerd`, its shim and `ctr` come from; `None`: the ones on PATH.
    bin: Option<PathBuf>,
    dir: TempDir,
}

/// Directories holding other containerd releases (`<dir>/usr/bin/containerd`), which
/// `cargo xtask setup` unpacks for the compatibility tests.
pub const OTHER_RELEASES: &str = "/opt/hivemind/containerd";

impl Containerd {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A private containerd of another release: `containerd`, `containerd-shim-runc-v2` and
    /// `ctr` from `bin` (e.g. an unpacked Debian package's `usr/bin`).
    pub fn start_from(bin: &Path) -> Self {
        Self::start_with(Some(bin.to_owned()))
    }

    /// The `usr/bin` of every other containerd release unpacked under [`OTHER_RELEASES`].
    pub fn other_releases() -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(OTHER_RELEASES)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("usr/bin"))
            .filter(|bin| bin.join("containerd").exists())
            .collect();
        found.sort();
        found
    }

    fn daemon(&self) -> Command {
        match &self.bin {
            None => Command::new("containerd"),
            Some(bin) => {
                let mut command = Command::new(bin.join("containerd"));
                // The daemon finds its shim on PATH.
                let path = std::env::var("PATH").unwrap_or_default();
                command.env("PATH", format!("{}:{path}", bin.display()));
                command
            }
        }
    }

    /// A `ctr` command against this containerd, to add arguments to (and run or spawn).
    pub fn ctr_command(&self) -> Command {
        let mut command = match &self.bin {
            None => Command::new("ctr"),
            Some(bin) => Command::new(bin.join("ctr")),
        };
        command.arg("--address").arg(&self.socket);
        command
    }

    /// `containerd --version`.
    pub fn version(&self) -> String {
        check(self.daemon().arg("--version")).trim().to_owned()
    }

    fn start_with(bin: Option<PathBuf>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hm-ctrd-")
            .tempdir()
            .expect("containerd temp dir");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}/root\"\nstate = \"{root}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = dir.path().display(),
                sock = socket.display()
            ),
        )
        .expect("write containerd config");
        let mut me = Self {
            process: None,
            socket,
            bin,
            dir,
        };
        me.process = Some(Process::spawn(
            "containerd",
            me.daemon().arg("--config").arg(&config),
            &me.dir.path().join("containerd.log"),
        ));
        wait_for("containerd socket", Duration::from_secs(20), || {
            let process = me.process.as_mut().expect("running");
            if let Some(status) = process.exited() {
                panic!("containerd exited ({status}):\n{}", process.log());
            }
            std::os::unix::net::UnixStream::connect(&me.socket).ok()
        });
        me
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Process::pid)
    }

    /// `ctr --address SOCKET ARGS` (never panics on a non-zero exit).
    pub fn ctr(&self, args: &[&str]) -> Output {
        run(self.ctr_command().args(args))
    }

    /// `ctr ...` that must succeed; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        check(self.ctr_command().args(args))
    }

    /// Container ids in `namespace`.
    pub fn containers(&self, namespace: &str) -> Vec<String> {
        ids(&self.ctr(&["-n", namespace, "containers", "ls", "-q"]))
    }

    /// The OCI runtime spec containerd holds for container `id` (`ctr containers info`).
    pub fn oci_spec(&self, namespace: &str, id: &str) -> serde_json::Value {
        let info = self.ctr_ok(&["-n", namespace, "containers", "info", id]);
        let info: serde_json::Value = serde_json::from_str(&info)
            .unwrap_or_else(|err| panic!("ctr info {id}: {err}\n{info}"));
        info["Spec"].clone()
    }

    /// Image references in `namespace`.
    pub fn images(&self, namespace: &str) -> Vec<String> {
        ids(&self.ctr(&["-n", namespace, "images", "ls", "-q"]))
    }

    /// Snapshot keys in `namespace`.
    pub fn snapshots(&self, namespace: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.ctr(&["-n", namespace, "snapshots", "ls"]).stdout)
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// Stops containerd as a crash would (for reconnect tests); `restart` brings it back.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts containerd again with the same config after [`Containerd::kill`].
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "containerd is still running");
        let _ = std::fs::remove_file(&self.socket);
        let config = self.dir.path().join("config.toml");
        self.process = Some(Process::spawn(
            "containerd",
            self.daemon().arg("--config").arg(&config),
            &self.dir.path().join("containerd-restarted.log"),
        ));
        wait_for(
            "containerd socket after restart",
            Duration::from_secs(20),
            || std::os::unix::net::UnixStream::connect(&self.socket).ok(),
        );
    }

    /// Kills every task and removes every container in every namespace, then stops the daemon,
    /// kills shims it left, and unmounts what it mounted under its root.
    fn teardown(&mut self) {
        if self.process.is_some() {
            for ns in ids(&self.ctr(&["namespaces", "ls", "-q"])) {
                for task in ids(&self.ctr(&["-n", &ns, "tasks", "ls", "-q"])) {
                    let _ = self.ctr(&["-n", &ns, "tasks", "kill", "-s", "SIGKILL", &task]);
                    let _ = self.ctr(&["-n", &ns, "tasks", "rm", "-f", &task]);
                }
                for container in ids(&self.ctr(&["-n", &ns, "containers", "ls", "-q"])) {
                    let _ = self.ctr(&["-n", &ns, "containers", "rm", &container]);
                }
            }
        }
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(10));
        }
        for pid in shims_of(&self.socket) {
            let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
            // SAFETY: kill(2) with plain integers; a stale pid at worst gets ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let mut mounts = mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = Command::new("umount").args(["-l", &mount]).status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn ids(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// containerd-shim processes serving the containerd at `socket`.
pub fn shims_of(socket: &Path) -> Vec<u32> {
    let needle = socket.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.contains("containerd-shim") && cmdline.contains(&needle)
            }) && pid_alive(*pid)
        })
        .collect()
}
