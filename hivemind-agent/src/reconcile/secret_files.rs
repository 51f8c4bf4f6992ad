//! A container's `/run/secrets`: a small tmpfs under its directory (so no plaintext ever
//! reaches a disk), one file per secret with mode 0400 owned by the container's user,
//! each bind-mounted read-only into the container, as Swarm does.

use std::{
    io,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use nix::mount::{MntFlags, MsFlags};

use crate::runtime::spec::BindMount;

/// Where secrets appear inside containers.
pub const TARGET_DIR: &str = "/run/secrets";
/// A secret's largest value (Docker's limit), and room for a few on one tmpfs.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;
const TMPFS_SIZE: &str = "size=8m";

/// The tmpfs of the container whose directory is `container_dir`.
fn mount_point(container_dir: &Path) -> PathBuf {
    container_dir.join("secrets")
}

/// Mounts the tmpfs and writes `files` (`(target name, value)`), readable by `uid:gid` only;
/// the bind mounts for the container's spec. On error the tmpfs is unmounted again.
pub fn materialise(
    container_dir: &Path,
    files: &[(String, Vec<u8>)],
    uid: u32,
    gid: u32,
) -> io::Result<Vec<BindMount>> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let dir = mount_point(container_dir);
    std::fs::create_dir_all(&dir)?;
    nix::mount::mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("{TMPFS_SIZE},mode=0700").as_str()),
    )
    .map_err(io::Error::from)?;
    let written = files
        .iter()
        .map(|(target, value)| {
            write_file(&dir.join(target), value, uid, gid).map(|path| (target, path))
        })
        .collect::<io::Result<Vec<_>>>();
    match written {
        Ok(paths) => Ok(paths
            .into_iter()
            .map(|(target, source)| BindMount {
                source,
                destination: format!("{TARGET_DIR}/{target}"),
                read_only: true,
            })
            .collect()),
        Err(err) => {
            release(container_dir);
            Err(err)
        }
    }
}

fn write_file(path: &Path, value: &[u8], uid: u32, gid: u32) -> io::Result<PathBuf> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)?;
    file.write_all(value)?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400))?;
    Ok(path.to_owned())
}

/// Unmounts the container's tmpfs (lazily: a task being torn down may still hold it), so
/// its directory can be removed. Nothing to do when there is none.
pub fn release(container_dir: &Path) {
    let dir = mount_point(container_dir);
    match nix::mount::umount2(&dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::ENOENT | nix::errno::Errno::EINVAL) => {}
        Err(err) => {
            tracing::warn!(path = %dir.display(), "cannot unmount the secrets tmpfs: {err}");
        }
    }
}
