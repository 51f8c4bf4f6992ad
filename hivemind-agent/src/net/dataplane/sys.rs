//! The one bpf(2) command aya 0.16 does not wrap: `BPF_MAP_UPDATE_BATCH`. Loading 100 000
//! policy entries one syscall each is as slow as iptables-restore; in batches it takes a few
//! tens of milliseconds.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr`, the `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries per syscall: bounded so the kernel's copy of one batch stays small.
const CHUNK: usize = 16_384;

/// Writes every `(key, value)` into the map behind `fd` with `BPF_ANY`, in batches.
pub fn update_batch<K: Pod, V: Pod>(fd: BorrowedFd<'_>, entries: &[(K, V)]) -> io::Result<()> {
    let map_fd =
        u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    for chunk in entries.chunks(CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut done = 0;
        while done < chunk.len() {
            let rest = chunk.len() - done;
            let mut attr = BatchAttr {
                keys: keys[done..].as_ptr() as u64,
                values: values[done..].as_ptr() as u64,
                count: u32::try_from(rest)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
                map_fd,
                ..BatchAttr::default()
            };
            // SAFETY: `attr` is a valid, fully initialised `bpf_attr` batch member; `keys` and
            // `values` point to `count` initialised elements of the map's key and value sizes
            // (`K` and `V` are the map's `Pod` types) that outlive the call. The kernel writes
            // back only `attr.count`.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_UPDATE_BATCH,
                    &raw mut attr,
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            let written = attr.count as usize;
            if written == 0 {
                return Err(io::Error::other("BPF_MAP_UPDATE_BATCH made no progress"));
            }
            done += written;
        }
    }
    Ok(())
}
