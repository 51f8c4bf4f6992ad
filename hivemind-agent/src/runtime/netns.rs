//! Network namespaces the agent makes for containers: `/run/hivemind/netns/<node>/<id>`, each
//! a bind mount of a fresh namespace, like `ip netns add` does. runc joins it by path; the
//! datapath plugs the container's interface into it. One directory per node name, so agents
//! sharing a machine (tests) never touch each other's namespaces.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
#[error("network namespace {path}: cannot {op}")]
pub struct NetnsError {
    pub path: PathBuf,
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

/// The directory holding one node's container namespaces.
#[derive(Clone, Debug)]
pub struct NetnsDir {
    dir: PathBuf,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes the namespace directory a shared mount point (as iproute2 does for /run/netns), so
/// the namespaces mounted below it are visible in other mount namespaces too.
fn prepare_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let c_dir = c_path(dir)?;
    // SAFETY: valid NUL-terminated paths; a null data pointer is allowed for these flags.
    let shared = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c_dir.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if shared == 0 {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself, then mark it shared.
    // SAFETY: as above.
    check(unsafe {
        libc::mount(
            c_dir.as_ptr(),
            c_dir.as_ptr(),
            c"none".as_ptr(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })?;
    // SAFETY: as above.
    check(unsafe {
        libc::mount(
            c"none".as_ptr(),
            c_dir.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        )
    })
}

impl NetnsDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Creates the namespace for container `id` (idempotent: an existing one is kept).
    pub fn create(&self, id: &str) -> Result<PathBuf, NetnsError> {
        let target = self.path(id);
        let fail = |op, source| NetnsError {
            path: target.clone(),
            op,
            source,
        };
        if is_mounted(&target) {
            return Ok(target);
        }
        prepare_dir(&self.dir).map_err(|e| fail("prepare the namespace directory", e))?;
        fs::File::create(&target).map_err(|e| fail("create the mount point", e))?;
        let c_target = c_path(&target).map_err(|e| fail("encode the path", e))?;
        // unshare(CLONE_NEWNET) moves only the calling thread; a throwaway thread keeps the
        // agent's own threads in the node namespace.
        let result = std::thread::spawn(move || -> io::Result<()> {
            // SAFETY: unshare takes a flag word; it affects only this thread.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
            // SAFETY: valid NUL-terminated paths that outlive the call.
            check(unsafe {
                libc::mount(
                    c"/proc/thread-self/ns/net".as_ptr(),
                    c_target.as_ptr(),
                    c"none".as_ptr(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            })
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")));
        if let Err(source) = result {
            let _ = fs::remove_file(&target);
            return Err(fail("make the namespace", source));
        }
        Ok(target)
    }

    /// Unmounts and removes the namespace of container `id`. Idempotent.
    pub fn remove(&self, id: &str) -> Result<(), NetnsError> {
        let target = self.path(id);
        if !target.exists() {
            return Ok(());
        }
        let c_target = c_path(&target).map_err(|source| NetnsError {
            path: target.clone(),
            op: "encode the path",
            source,
        })?;
        // SAFETY: valid NUL-terminated path. EINVAL means it was not mounted; removal proceeds.
        unsafe {
            libc::umount2(c_target.as_ptr(), libc::MNT_DETACH);
        }
        fs::remove_file(&target).map_err(|source| NetnsError {
            path: target.clone(),
            op: "remove",
            source,
        })
    }

    /// Ids of every namespace present (for cleaning up after a crash).
    pub fn list(&self) -> Vec<String> {
        fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect()
    }
}

fn is_mounted(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    text.lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
}
