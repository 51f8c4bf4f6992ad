//! Network-namespace "hosts" and the veth links between them.

use std::process::{Command, Output};

use crate::util::{check, run, unique};

/// A network namespace made with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace with loopback up.
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        check(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        check(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for setns/nsenter.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command that runs `program` inside this namespace. Switches only the network
    /// namespace (nsenter), unlike `ip netns exec`, which also remounts /sys privately — that
    /// would hide /sys/fs/bpf, where the agent pins its maps.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `program args` inside; returns its output (never panics on a non-zero exit).
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        run(self.command(program).args(args))
    }

    /// Runs `program args` inside and panics unless it succeeds; returns stdout.
    pub fn check(&self, program: &str, args: &[&str]) -> String {
        check(self.command(program).args(args))
    }

    /// `sh -c SCRIPT` inside; panics unless it succeeds; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        self.check("sh", &["-c", script])
    }

    /// `ip -n NS ARGS`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        check(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Links `a` and `b` with a veth pair, addresses both ends (CIDR notation) and brings them up.
/// Returns the interface names (in `a`, in `b`).
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> (String, String) {
    let (a_if, b_if) = (unique("va"), unique("vb"));
    check(Command::new("ip").args([
        "link",
        "add",
        &a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &b_if,
        "netns",
        b.name(),
    ]));
    for (ns, ifname, addr) in [(a, &a_if, a_addr), (b, &b_if, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
    }
    (a_if, b_if)
}

/// Names of all namespaces `ip netns list` shows.
pub fn list() -> Vec<String> {
    String::from_utf8_lossy(&run(Command::new("ip").args(["netns", "list"])).stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}
