//! The default seccomp profile: the system calls Docker's default profile refuses, refused with
//! EPERM, everything else allowed.
//!
//! Docker writes its profile as an allow-list of ~350 calls; here it is the complement, written
//! as the deny-list it amounts to on x86-64, so it stays short enough to review. Most of these
//! already fail without `CAP_SYS_ADMIN` and friends (which containers don't get); the profile is
//! defence in depth against kernel bugs reachable through them.

use serde_json::{Value, json};

/// Calls no container gets (kernel modules, keyrings, clocks, reboot, namespaces, mounts,
/// tracing other processes, BPF, perf, userfaultfd, `io_uring`, ...).
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "_sysctl",
    "sysfs",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "vm86",
    "vm86old",
];

/// `clone` flags that create namespaces; `clone` with any of them is refused (as `unshare`).
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The `linux.seccomp` object of the OCI runtime spec.
pub fn default_profile() -> Value {
    let mut syscalls = vec![json!({
        "names": DENIED,
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": EPERM,
    })];
    // clone3 passes its flags in a struct seccomp cannot inspect; ENOSYS makes libc fall back
    // to clone, whose flags the rules below can check (Docker does the same).
    syscalls.push(json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS }));
    for flag in CLONE_NAMESPACE_FLAGS {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{ "index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    })
}
