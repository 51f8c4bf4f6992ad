//! Reading files of an image — its `/etc/passwd` and `/etc/group`, to resolve a named `USER` —
//! the way containerd's own `WithUsername` does: a read-only view snapshot of the image's top
//! layer, mounted for a moment in a private directory, read, unmounted and removed.
//!
//! What was read is cached by the image's chain id (an image's files never change).

use std::{
    collections::HashMap,
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use containerd_client::{
    services::v1::{
        CreateRequest, DeleteRequest,
        leases_client::LeasesClient,
        snapshots::{
            RemoveSnapshotRequest, ViewSnapshotRequest, snapshots_client::SnapshotsClient,
        },
    },
    types::Mount,
};
use nix::mount::{MntFlags, MsFlags};

use super::{Runtime, RuntimeError, containers::SNAPSHOTTER, user::Accounts};

/// Files larger than this are not account databases; read no more of them.
const MAX_FILE: u64 = 4 << 20;

/// Accounts read per chain id.
#[derive(Debug, Default, Clone)]
pub struct AccountsCache {
    by_chain: Arc<Mutex<HashMap<String, Arc<Accounts>>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot mount the image's files at {target}")]
    Mount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path} of the image")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

impl Runtime {
    /// The `/etc/passwd` and `/etc/group` of the image whose top snapshot is `chain_id`.
    pub async fn image_accounts(&self, chain_id: &str) -> Result<Arc<Accounts>, RuntimeError> {
        if let Some(cached) = self
            .accounts
            .by_chain
            .lock()
            .ok()
            .and_then(|c| c.get(chain_id).cloned())
        {
            return Ok(cached);
        }
        let key = format!("hivemind-view-{}", fastrand::u64(..));
        let lease = format!("{key}-lease");
        let mut leases = LeasesClient::new(self.channel.clone());
        leases
            .create(self.request(CreateRequest {
                id: lease.clone(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(|status| self.call_error("lease a view of", chain_id, &status))?;
        let result = self.read_accounts(chain_id, &key, &lease).await;
        // The lease held the view; with it gone (and the view removed) nothing is left.
        let _ = SnapshotsClient::new(self.channel.clone())
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
            }))
            .await;
        let _ = leases
            .delete(self.request(DeleteRequest {
                id: lease,
                sync: false,
            }))
            .await;
        let accounts = Arc::new(result?);
        if let Ok(mut cache) = self.accounts.by_chain.lock() {
            cache.insert(chain_id.to_owned(), accounts.clone());
        }
        Ok(accounts)
    }

    async fn read_accounts(
        &self,
        chain_id: &str,
        key: &str,
        lease: &str,
    ) -> Result<Accounts, RuntimeError> {
        let mounts = SnapshotsClient::new(self.channel.clone())
            .view(self.leased(
                lease,
                ViewSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.into(),
                    parent: chain_id.into(),
                    labels: HashMap::new(),
                },
            ))
            .await
            .map_err(|status| self.call_error("view the snapshot of", chain_id, &status))?
            .into_inner()
            .mounts;
        let target = std::env::temp_dir().join(key);
        tokio::task::spawn_blocking(move || read_mounted(&mounts, &target))
            .await
            .map_err(|err| RuntimeError::Call {
                op: "read the accounts of",
                id: chain_id.to_owned(),
                code: tonic::Code::Internal,
                message: err.to_string(),
            })?
            .map_err(|err| RuntimeError::Call {
                op: "read the accounts of",
                id: chain_id.to_owned(),
                code: tonic::Code::Internal,
                message: crate::error_chain(&err),
            })
    }
}

/// Mounts `mounts` (read-only) at a fresh `target`, reads the two files, and unmounts.
fn read_mounted(mounts: &[Mount], target: &Path) -> Result<Accounts, RootfsError> {
    let mount_err = |source| RootfsError::Mount {
        target: target.to_owned(),
        source,
    };
    std::fs::create_dir_all(target).map_err(mount_err)?;
    let mounted = Mounted::new(target);
    for mount in mounts {
        mount_one(mount, target).map_err(mount_err)?;
        mounted.count.set(mounted.count.get() + 1);
    }
    let passwd = read_in_root(target, "etc/passwd")?;
    let group = read_in_root(target, "etc/group")?;
    drop(mounted);
    Ok(Accounts::parse(&passwd, &group))
}

/// Unmounts what was mounted at `target` and removes the directory, also on error.
struct Mounted<'a> {
    target: &'a Path,
    count: std::cell::Cell<usize>,
}

impl<'a> Mounted<'a> {
    fn new(target: &'a Path) -> Self {
        Self {
            target,
            count: std::cell::Cell::new(0),
        }
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        for _ in 0..self.count.get() {
            if let Err(err) = nix::mount::umount2(self.target, MntFlags::MNT_DETACH) {
                tracing::warn!(target = %self.target.display(), "unmounting an image view: {err}");
            }
        }
        let _ = std::fs::remove_dir(self.target);
    }
}

/// One containerd mount (fstab-style options: flags, the rest as data), read-only.
fn mount_one(mount: &Mount, target: &Path) -> io::Result<()> {
    let mut flags = MsFlags::MS_RDONLY;
    let mut data = Vec::new();
    for option in &mount.options {
        match option.as_str() {
            "ro" | "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    let bind = flags.contains(MsFlags::MS_BIND);
    let fstype = (!bind).then_some(mount.r#type.as_str());
    let data = data.join(",");
    nix::mount::mount(
        Some(mount.source.as_str()),
        target,
        fstype,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )?;
    if bind {
        // A bind mount ignores MS_RDONLY until remounted.
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// The text of `relative` under `root`; empty if the image has no such file. A link that
/// leads out of the image is not followed (treated as missing).
fn read_in_root(root: &Path, relative: &'static str) -> Result<String, RootfsError> {
    let read_err = |source| RootfsError::Read {
        path: relative,
        source,
    };
    let path = root.join(relative);
    let real = match std::fs::canonicalize(&path) {
        Ok(real) => real,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(err) => return Err(read_err(err)),
    };
    let root = std::fs::canonicalize(root).map_err(read_err)?;
    if !real.starts_with(&root) {
        tracing::warn!(file = relative, "a link leading out of the image; ignored");
        return Ok(String::new());
    }
    let mut text = String::new();
    std::fs::File::open(&real)
        .and_then(|f| f.take(MAX_FILE).read_to_string(&mut text))
        .map_err(read_err)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_inside_the_root_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/passwd"), "www:x:1000:1000::/:/bin/sh\n").expect("write");
        std::fs::write(dir.path().join("outside"), "secret").expect("write");
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("etc/group"))
            .expect("symlink");
        assert_eq!(
            read_in_root(&root, "etc/passwd").expect("read"),
            "www:x:1000:1000::/:/bin/sh\n"
        );
        assert_eq!(read_in_root(&root, "etc/group").expect("read"), "");
        std::fs::remove_file(root.join("etc/group")).expect("rm");
        std::os::unix::fs::symlink("passwd", root.join("etc/group")).expect("symlink");
        assert!(
            read_in_root(&root, "etc/group")
                .expect("read")
                .starts_with("www")
        );
        assert_eq!(read_in_root(&root, "etc/shadow").expect("read"), "");
    }
}
