//! The OCI runtime spec for a container, with the isolation a Docker user expects by default:
//! Docker's default capabilities, no-new-privileges, a default seccomp profile, masked and
//! read-only kernel paths, and its own PID, IPC, UTS, mount and network namespaces.
//!
//! Pure: builds JSON from its inputs, so it is unit-tested without containerd.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::seccomp;

/// The OCI spec's type URL in containerd's `Container.spec` Any.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Kernel paths hidden from containers (as Docker does).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Kernel paths containers may read but not write.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// CFS period for `--cpus`.
const CPU_PERIOD_US: u64 = 100_000;

/// A bind mount into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// Everything the spec depends on.
#[derive(Clone, Debug, Default)]
pub struct SpecInput {
    /// Container id: also the hostname and the cgroup leaf.
    pub id: String,
    /// argv: the image's entrypoint + cmd.
    pub args: Vec<String>,
    /// `KEY=VALUE`, image env first, app env overriding.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Network namespace made by the agent (`/run/hivemind/netns/<id>`).
    pub netns_path: PathBuf,
    /// Volumes and the generated `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
    pub mounts: Vec<BindMount>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    pub cpu_millis: Option<u64>,
    /// cgroup path for runc's cgroupfs driver, e.g. `/hivemind/<node>/<id>`.
    pub cgroup_path: String,
}

/// The OCI runtime spec as JSON.
pub fn build(input: &SpecInput) -> Value {
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ];
    for bind in &input.mounts {
        let access = if bind.read_only { "ro" } else { "rw" };
        mounts.push(json!({
            "destination": bind.destination,
            "type": "bind",
            "source": bind.source,
            "options": ["rbind", "rprivate", access],
        }));
    }

    let mut resources = json!({ "devices": default_device_rules() });
    if let Some(limit) = input.memory_bytes {
        resources["memory"] = json!({ "limit": limit, "swap": limit });
    }
    if let Some(millis) = input.cpu_millis {
        resources["cpu"] =
            json!({ "quota": millis * CPU_PERIOD_US / 1000, "period": CPU_PERIOD_US });
    }

    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {
                "uid": input.uid,
                "gid": input.gid,
                "additionalGids": input.additional_gids,
            },
            "args": input.args,
            "env": input.env,
            "cwd": input.cwd,
            "capabilities": {
                "bounding": DEFAULT_CAPABILITIES,
                "effective": DEFAULT_CAPABILITIES,
                "permitted": DEFAULT_CAPABILITIES,
            },
            "noNewPrivileges": true,
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": input.id,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": input.cgroup_path,
            "resources": resources,
            "namespaces": [
                { "type": "pid" },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" },
                { "type": "network", "path": input.netns_path },
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp::default_profile(),
        },
    })
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    json!({ "destination": destination, "type": kind, "source": source, "options": options })
}

/// Deny every device, then allow the ones every container needs (as containerd's defaults).
fn default_device_rules() -> Value {
    let char_dev = |major: i64, minor: Option<i64>| json!({ "allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm" });
    json!([
        { "allow": false, "access": "rwm" },
        char_dev(1, Some(3)),   // null
        char_dev(1, Some(5)),   // zero
        char_dev(1, Some(7)),   // full
        char_dev(1, Some(8)),   // random
        char_dev(1, Some(9)),   // urandom
        char_dev(5, Some(0)),   // tty
        char_dev(5, Some(1)),   // console
        char_dev(5, Some(2)),   // ptmx
        char_dev(136, None),    // pts/*
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SpecInput {
        SpecInput {
            id: "web-abc12".into(),
            args: vec!["httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            netns_path: "/run/hivemind/netns/web-abc12".into(),
            cgroup_path: "/hivemind/web-abc12".into(),
            ..SpecInput::default()
        }
    }

    #[test]
    fn isolated_by_default() {
        let spec = build(&input());
        let process = &spec["process"];
        assert_eq!(process["noNewPrivileges"], true);
        let caps = process["capabilities"]["bounding"]
            .as_array()
            .expect("caps");
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        assert!(
            !caps
                .iter()
                .any(|c| c == "CAP_SYS_ADMIN" || c == "CAP_NET_ADMIN")
        );
        let namespaces: Vec<&str> = spec["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert_eq!(namespaces, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(
            spec["linux"]["namespaces"][4]["path"],
            "/run/hivemind/netns/web-abc12"
        );
        assert!(
            spec["linux"]["maskedPaths"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p == "/proc/kcore"))
        );
        assert!(
            spec["linux"]["readonlyPaths"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p == "/proc/sys"))
        );
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let denied = &spec["linux"]["seccomp"]["syscalls"][0]["names"];
        assert!(
            denied
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == "mount"))
        );
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], false);
        assert!(spec["linux"]["resources"].get("memory").is_none());
    }

    #[test]
    fn limits_and_mounts() {
        let mut input = input();
        input.memory_bytes = Some(64 << 20);
        input.cpu_millis = Some(500);
        input.mounts.push(BindMount {
            source: "/var/lib/hivemind/volumes/data/_data".into(),
            destination: "/data".into(),
            read_only: true,
        });
        let spec = build(&input);
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["resources"]["cpu"]["period"], 100_000);
        let bind = spec["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == "/data")
            .expect("volume mount");
        assert_eq!(bind["options"], json!(["rbind", "rprivate", "ro"]));
    }
}
