//! The BPF filesystem that holds pins.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

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
