//! [`SocketLb`]: the `hivemind-lb` object loaded, its maps pinned next to the dataplane's, and
//! its three `sock_addr` programs attached to one cgroup through pinned links.
//!
//! Like the packet programs, the links and maps are pinned, so VIPs keep balancing while the
//! agent is away; a new agent loads fresh programs and moves each pinned link to them with an
//! atomic link update.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use crate::net::dataplane::bpffs;
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, MapError},
    programs::{
        CgroupAttachMode, CgroupSockAddr,
        cgroup_sock_addr::CgroupSockAddrLink,
        links::{FdLink, PinnedLink},
    },
};
use hivemind_common::lb::{
    LbBackend, LbBackendKey, LbKey, LbService, MAX_BACKENDS, PROTO_TCP, PROTO_UDP, names,
};

/// The object built by `build.rs` from `hivemind-ebpf` (its `hivemind-lb` binary).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hivemind-lb"));

const PROGRAMS: [&str; 3] = [
    names::PROG_CONNECT4,
    names::PROG_SENDMSG4,
    names::PROG_RECVMSG4,
];

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("cannot load the load-balancer eBPF object")]
    LoadObject(#[source] aya::EbpfError),
    #[error("the load-balancer object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the load-balancer object has no map {0}")]
    MissingMap(&'static str),
    #[error("the kernel rejected program {name} (socket load balancing needs Linux 5.18+)")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("attach {program} to cgroup {path}")]
    Attach {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinned link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pin {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("unpin {path}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> LbError {
    move |source| LbError::Map { map, source }
}

fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// What the maps hold for one VIP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Installed {
    base: u32,
    backends: Vec<u32>,
    /// Entries present in each half of the slot space (`0..` and `MAX_BACKENDS..`).
    written: [u32; 2],
}

/// The loaded programs, the two maps the agent writes, and the links.
pub struct SocketLb {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    services: BpfHashMap<MapData, LbKey, LbService>,
    backends: BpfHashMap<MapData, LbBackendKey, LbBackend>,
    links: Vec<FdLink>,
    installed: BTreeMap<u32, Installed>,
}

impl std::fmt::Debug for SocketLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketLb")
            .field("pin_dir", &self.pin_dir)
            .field("links", &self.links.len())
            .field("services", &self.installed.len())
            .finish_non_exhaustive()
    }
}

impl SocketLb {
    /// Loads the programs (a verifier rejection fails here) against the maps pinned in
    /// `pin_dir` (created there on first start), and reads back what the maps hold.
    pub fn load(pin_dir: &Path) -> Result<Self, LbError> {
        let mut ebpf = load_object(pin_dir)?;
        for name in PROGRAMS {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(LbError::MissingProgram(name))?
                .try_into()
                .map_err(|source| LbError::LoadProgram { name, source })?;
            program
                .load()
                .map_err(|source| LbError::LoadProgram { name, source })?;
            let path = pin_dir.join(format!("prog_{name}"));
            let _ = std::fs::remove_file(&path);
            program
                .pin(&path)
                .map_err(|source| LbError::Pin { path, source })?;
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(LbError::MissingMap(name))
        };
        let services = BpfHashMap::try_from(take(&mut ebpf, names::MAP_SERVICES)?)
            .map_err(map_err(names::MAP_SERVICES))?;
        let backends = BpfHashMap::try_from(take(&mut ebpf, names::MAP_BACKENDS)?)
            .map_err(map_err(names::MAP_BACKENDS))?;
        let mut lb = Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            services,
            backends,
            links: Vec::new(),
            installed: BTreeMap::new(),
        };
        lb.read_back();
        Ok(lb)
    }

    /// Rebuilds `installed` from the pinned maps, so the first update after a restart writes
    /// into the half no connection reads.
    fn read_back(&mut self) {
        let mut installed: BTreeMap<u32, Installed> = BTreeMap::new();
        for (key, service) in self.services.iter().filter_map(Result::ok) {
            let entry = installed.entry(key.ip).or_default();
            entry.base = service.base;
            entry.backends = (0..service.count)
                .filter_map(|i| {
                    let slot = LbBackendKey {
                        id: service.id,
                        slot: service.base + i,
                    };
                    self.backends.get(&slot, 0).ok().map(|b| b.ip)
                })
                .collect();
        }
        for key in self.backends.keys().filter_map(Result::ok) {
            let entry = installed.entry(key.id).or_default();
            let half = usize::from(key.slot >= MAX_BACKENDS);
            let index = key.slot % MAX_BACKENDS + 1;
            entry.written[half] = entry.written[half].max(index);
        }
        self.installed = installed;
    }

    /// Attaches the three programs to the cgroup (v2) directory `cgroup`, or takes over the
    /// links a previous run pinned.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), LbError> {
        let file = File::open(cgroup).map_err(|source| LbError::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        for name in PROGRAMS {
            let path = self.pin_dir.join(format!("lb_link_{name}"));
            let program: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(LbError::MissingProgram(name))?
                .try_into()
                .map_err(|source| LbError::LoadProgram { name, source })?;
            let attach_err = |source| LbError::Attach {
                program: name,
                path: cgroup.to_owned(),
                source,
            };
            if path.exists() {
                match adopt(program, &path) {
                    Ok(link) => {
                        tracing::info!(program = name, "reusing pinned cgroup link");
                        self.links.push(link);
                        continue;
                    }
                    Err(err) => {
                        tracing::warn!(path = %path.display(), error = %crate::error_chain(&err), "dropping a stale pinned link");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            // A cgroup link takes no flags (the kernel refuses ALLOW_MULTI there) and always
            // coexists with other programs on the same hook.
            let id = program
                .attach(&file, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            let link = program.take_link(id).map_err(attach_err)?;
            let link = FdLink::try_from(link).map_err(|source| LbError::Link {
                path: path.clone(),
                source,
            })?;
            let link =
                bpffs::pin_link(link, &path).map_err(|source| LbError::Pin { path, source })?;
            self.links.push(link);
        }
        tracing::info!(cgroup = %cgroup.display(), "socket load balancing attached");
        Ok(())
    }

    /// Detaches the programs for good (the links are unpinned and closed).
    pub fn detach(&mut self) -> Result<(), LbError> {
        for name in PROGRAMS {
            let path = self.pin_dir.join(format!("lb_link_{name}"));
            bpffs::unpin(&path).map_err(|source| LbError::Unpin { path, source })?;
        }
        self.links.clear();
        Ok(())
    }

    /// Makes the maps balance exactly `wanted`: VIP → the replicas it spreads over (an empty
    /// list refuses connections). Every port of a VIP, TCP and UDP, goes to the same port of
    /// the replica. Unchanged VIPs are not touched.
    pub fn set_services(
        &mut self,
        wanted: &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
    ) -> Result<(), LbError> {
        for (vip, replicas) in wanted {
            let mut backends: Vec<u32> = replicas.iter().copied().map(wire).collect();
            backends.sort_unstable();
            backends.dedup();
            if backends.len() > MAX_BACKENDS as usize {
                tracing::warn!(%vip, replicas = backends.len(), max = MAX_BACKENDS, "more replicas than a VIP balances over; using the first ones");
                backends.truncate(MAX_BACKENDS as usize);
            }
            self.install(wire(*vip), backends)?;
        }
        let wanted: BTreeSet<u32> = wanted.keys().copied().map(wire).collect();
        let gone: Vec<u32> = self
            .installed
            .keys()
            .filter(|vip| !wanted.contains(vip))
            .copied()
            .collect();
        for vip in gone {
            self.uninstall(vip)?;
        }
        Ok(())
    }

    /// Writes the new set into the half of the slot space no connection reads, then points
    /// the service entries at it: a connect sees the old set or the new one, never a slot
    /// being written.
    fn install(&mut self, vip: u32, backends: Vec<u32>) -> Result<(), LbError> {
        let current = self.installed.get(&vip).cloned();
        if current
            .as_ref()
            .is_some_and(|c| c.backends == backends && self.has_entries(vip, c))
        {
            return Ok(());
        }
        let mut next = current.unwrap_or_default();
        let base = if next.backends.is_empty() && next.written == [0, 0] {
            0
        } else if next.base == 0 {
            MAX_BACKENDS
        } else {
            0
        };
        let half = usize::from(base != 0);
        let count = u32::try_from(backends.len()).unwrap_or(MAX_BACKENDS);
        for (i, ip) in (0..).zip(&backends) {
            let key = LbBackendKey {
                id: vip,
                slot: base + i,
            };
            let value = LbBackend {
                ip: *ip,
                port: 0,
                _pad: 0,
            };
            self.backends
                .insert(&key, &value, 0)
                .map_err(map_err(names::MAP_BACKENDS))?;
        }
        for i in count..next.written[half] {
            let _ = self.backends.remove(&LbBackendKey {
                id: vip,
                slot: base + i,
            });
        }
        next.written[half] = count;
        let service = LbService {
            id: vip,
            count,
            base,
            _pad: 0,
        };
        for protocol in [PROTO_TCP, PROTO_UDP] {
            self.services
                .insert(&service_key(vip, protocol), &service, 0)
                .map_err(map_err(names::MAP_SERVICES))?;
        }
        next.base = base;
        next.backends = backends;
        tracing::debug!(vip = %Ipv4Addr::from(vip.to_ne_bytes()), backends = count, "VIP backends updated");
        self.installed.insert(vip, next);
        Ok(())
    }

    fn has_entries(&self, vip: u32, installed: &Installed) -> bool {
        [PROTO_TCP, PROTO_UDP].into_iter().all(|protocol| {
            self.services
                .get(&service_key(vip, protocol), 0)
                .is_ok_and(|s| s.base == installed.base)
        })
    }

    /// Service entries first (new connections stop choosing), then the backends.
    fn uninstall(&mut self, vip: u32) -> Result<(), LbError> {
        for protocol in [PROTO_TCP, PROTO_UDP] {
            match self.services.remove(&service_key(vip, protocol)) {
                Ok(()) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(map_err(names::MAP_SERVICES)(err)),
            }
        }
        if let Some(installed) = self.installed.remove(&vip) {
            for (half, written) in installed.written.iter().enumerate() {
                let base = if half == 0 { 0 } else { MAX_BACKENDS };
                for i in 0..*written {
                    let _ = self.backends.remove(&LbBackendKey {
                        id: vip,
                        slot: base + i,
                    });
                }
            }
        }
        tracing::debug!(vip = %Ipv4Addr::from(vip.to_ne_bytes()), "VIP removed from the maps");
        Ok(())
    }

    /// VIP → the replicas the maps balance it over, as installed.
    pub fn installed(&self) -> BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> {
        self.installed
            .iter()
            .map(|(vip, i)| {
                (
                    Ipv4Addr::from(vip.to_ne_bytes()),
                    i.backends
                        .iter()
                        .map(|b| Ipv4Addr::from(b.to_ne_bytes()))
                        .collect(),
                )
            })
            .collect()
    }
}

fn service_key(vip: u32, protocol: u8) -> LbKey {
    LbKey {
        ip: vip,
        port: 0,
        protocol,
        _pad: 0,
    }
}

fn adopt(program: &mut CgroupSockAddr, path: &Path) -> Result<FdLink, LbError> {
    let link_err = |source| LbError::Link {
        path: path.to_owned(),
        source,
    };
    let pinned = PinnedLink::from_pin(path).map_err(link_err)?;
    let link = CgroupSockAddrLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
    let attach_err = |source| LbError::Attach {
        program: "pinned link",
        path: path.to_owned(),
        source,
    };
    let id = program.attach_to_link(link).map_err(attach_err)?;
    let link = program.take_link(id).map_err(attach_err)?;
    FdLink::try_from(link).map_err(link_err)
}

/// Loads the object against the maps pinned in `pin_dir`; a pinned map whose layout no longer
/// matches (an upgrade changed it) is replaced, as the dataplane does.
fn load_object(pin_dir: &Path) -> Result<Ebpf, LbError> {
    bpffs::load_object(OBJECT, pin_dir, &names::ALL_MAPS).map_err(|err| match err {
        bpffs::LoadError::Object(source) => LbError::LoadObject(source),
        bpffs::LoadError::Unpin { path, source } => LbError::Unpin { path, source },
    })
}

fn is_not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::ENOENT)
        }
        _ => false,
    }
}
