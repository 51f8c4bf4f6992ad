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

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 3;

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (24 bytes on 64-bit).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IF_NAMESIZE],
    data: *mut DrvInfo,
    _rest: [u8; 16],
}

/// The driver behind interface `ifname` in the calling thread's namespace (`veth`,
/// `virtio_net`, `ixgbe`…), as `ethtool -i` reports it.
pub fn driver_name(ifname: &str) -> io::Result<String> {
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    let mut request = IfReq {
        name: [0; libc::IF_NAMESIZE],
        data: &raw mut info,
        _rest: [0; 16],
    };
    let name = ifname.as_bytes();
    if name.len() >= libc::IF_NAMESIZE {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    request.name[..name.len()].copy_from_slice(name);
    // SAFETY: socket(2) with constant arguments; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCETHTOOL reads the ifreq and writes one ethtool_drvinfo through `data`;
    // both live on this stack frame for the call.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &raw mut request) };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` is the socket opened above, closed once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}
