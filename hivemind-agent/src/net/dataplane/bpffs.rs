//! The BPF filesystem that holds pins, and what the dataplane and the socket load balancer
//! both do with pins: load an object against its pinned maps, pin a link, unpin.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{Ebpf, EbpfLoader, maps::MapError, pin::PinError, programs::links::FdLink};

use crate::paths::BPFFS;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there, then creates `pin_dir`.
pub fn prepare(pin_dir: &Path) -> io::Result<()> {
    if !is_bpffs(Path::new(BPFFS))? {
        mount_bpffs(Path::new(BPFFS))?;
    }
    std::fs::create_dir_all(pin_dir)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = c_path(path)?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `stat` points to writable memory of the
    // right size; statfs only writes into it.
    let rc = unsafe { libc::statfs(c.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it initialised the struct.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::useless_conversion)] // f_type is i64 on x86_64 but not on every target
    Ok(i64::from(stat.f_type) == BPF_FS_MAGIC)
}

fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Why an object could not be loaded against its pins.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("load the eBPF object")]
    Object(#[source] aya::EbpfError),
    #[error("unpin {path}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Loads `object` with its maps pinned by name in `pin_dir`, reusing those an earlier run
/// pinned. A pinned map among `own_maps` whose definition no longer matches this build (an
/// upgrade changed it) is unpinned and made anew: its state starts over.
pub fn load_object(object: &[u8], pin_dir: &Path, own_maps: &[&str]) -> Result<Ebpf, LoadError> {
    let mut retired = 0;
    loop {
        match EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(object)
        {
            Ok(ebpf) => return Ok(ebpf),
            Err(aya::EbpfError::MapError(MapError::IncompatiblePinnedMap {
                name,
                property,
                expected,
                actual,
            })) if retired < own_maps.len() && own_maps.contains(&name.as_str()) => {
                tracing::warn!(
                    map = %name, property, expected, actual,
                    "pinned map does not match this version; replacing it (its state starts over)"
                );
                let path = pin_dir.join(&name);
                std::fs::remove_file(&path).map_err(|source| LoadError::Unpin { path, source })?;
                retired += 1;
            }
            Err(err) => return Err(LoadError::Object(err)),
        }
    }
}

/// Pins `link` at `path`, replacing a stale pin of an earlier run, and returns it.
pub fn pin_link(link: FdLink, path: &Path) -> Result<FdLink, PinError> {
    let _ = std::fs::remove_file(path);
    Ok(FdLink::from(link.pin(path)?))
}

/// Removes the pin at `path` (the kernel lets go of the object once nothing else holds it);
/// one already gone is fine.
pub fn unpin(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}
