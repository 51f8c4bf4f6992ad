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
    dir: TempDir,
}

impl Containerd {
    pub fn start() -> Self {
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
        let process = Process::spawn(
            "containerd",
            Command::new("containerd").arg("--config").arg(&config),
            &dir.path().join("containerd.log"),
        );
        let mut me = Self {
            process: Some(process),
            socket,
            dir,
        };
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
        run(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args))
    }

    /// `ctr ...` that must succeed; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        check(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(args),
        )
    }

    /// Container ids in `namespace`.
    pub fn containers(&self, namespace: &str) -> Vec<String> {
        ids(&self.ctr(&["-n", namespace, "containers", "ls", "-q"]))
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
            Command::new("containerd").arg("--config").arg(&config),
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
