//! Every filesystem path the agent uses, in one place.

use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/hivemind";
pub const DEFAULT_SOCKET: &str = "/run/hivemind/hivemind.sock";
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The BPF filesystem; pins live below `BPFFS/hivemind/<node>`.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Paths below the agent's data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The embedded (single-node) store.
    pub fn store_db(&self) -> PathBuf {
        self.root.join("state.redb")
    }

    /// Per-container files: `<id>/container.log`, `hosts`, `hostname`, `resolv.conf`.
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// The REST API's bearer token (mode 0600), made at first start.
    pub fn api_token(&self) -> PathBuf {
        self.root.join("api-token")
    }

    /// Named volumes: `<name>/_data`.
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// The cluster this node belongs to (written last when it inits or joins one: while it is
    /// absent, the node is not in a cluster).
    pub fn cluster_config(&self) -> PathBuf {
        self.root.join("cluster.json")
    }

    /// The cluster CA's certificate and this node's certificate and key.
    /// The key secrets and registry passwords are sealed with (see `sealed`).
    pub fn seal_key(&self) -> PathBuf {
        self.root.join("seal.key")
    }

    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// The local etcd member's data (`etcd --data-dir`).
    pub fn etcd(&self) -> PathBuf {
        self.root.join("etcd")
    }

    /// The local etcd member's process id, so a restarted agent finds the member it started.
    pub fn etcd_pid(&self) -> PathBuf {
        self.root.join("etcd.pid")
    }

    /// The local etcd member's output.
    pub fn etcd_log(&self) -> PathBuf {
        self.root.join("etcd.log")
    }

    /// Where `state.redb` goes once its contents moved into the cluster's etcd.
    pub fn store_db_backup(&self) -> PathBuf {
        self.root.join("state.redb.pre-cluster")
    }
}

/// Where the agent mounts its containers' network namespaces.
pub fn netns_dir(node: &str) -> PathBuf {
    Path::new("/run/hivemind/netns").join(node)
}

/// The cgroup path (as runc's cgroupfs driver takes it) under which `node`'s containers run:
/// one per node, so the VIP programs attached to it see this node's containers only, even
/// with several agents on one machine.
pub fn cgroup_parent(node: &str) -> String {
    format!("/hivemind/{node}")
}

/// Where the dataplane pins its maps, programs and links for `node`.
pub fn pin_dir(node: &str) -> PathBuf {
    Path::new(BPFFS).join("hivemind").join(node)
}
