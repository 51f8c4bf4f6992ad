//! [`Dataplane`]: the loaded object, its maps and its links, with synchronous typed operations.
//! The owner task in `mod.rs` drives one of these; tests and benchmarks may drive one directly.
//! Nothing here hands an aya type out.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{CStr, CString},
    io,
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap as BpfHashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap,
        PerCpuValues, RingBuf, lpm_trie::Key, of_maps::ArrayOfMaps,
    },
    programs::{
        LinkOrder, Program, SchedClassifier, TcAttach, TcAttachType, TestRun as _, TestRunOptions,
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use hivemind_common::{
    Counter,
    config::Config,
    ct::{CtKey, CtValue, NatValue, PortKey, PortTarget},
    endpoint::{Endpoint, FLAG_REMOTE},
    event::VerdictEvent,
    names,
    overlay::{Peer, PeerStats},
    policy::{MAX_POLICIES, MAX_RULE_ENTRIES, PolicyKey, PolicyValue},
    reason,
};
use ipnet::Ipv4Net;

use super::{DataplaneError, bpffs, sys};
use crate::proto;

/// The object built by `build.rs` from `hivemind-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hivemind"));

/// Kernel name of the inner policy maps the agent creates (at most 15 bytes).
const RULES_MAP_NAME: &str = "HM_POLICY_RULES";
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_F_NO_PREALLOC: u32 = 1;

/// The programs, as the agent names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProgramKind {
    FromContainer,
    ToContainer,
    NodeIngress,
    FromHost,
    Underlay,
}

impl ProgramKind {
    pub const ALL: [Self; 5] = [
        Self::FromContainer,
        Self::ToContainer,
        Self::NodeIngress,
        Self::FromHost,
        Self::Underlay,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::FromContainer => names::PROG_FROM_CONTAINER,
            Self::ToContainer => names::PROG_TO_CONTAINER,
            Self::NodeIngress => names::PROG_NODE_INGRESS,
            Self::FromHost => names::PROG_FROM_HOST,
            Self::Underlay => names::PROG_UNDERLAY_XDP,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The TCX hook a TC program attaches to.
    const fn hook(self) -> Option<TcAttachType> {
        match self {
            Self::FromContainer | Self::NodeIngress => Some(TcAttachType::Ingress),
            Self::ToContainer | Self::FromHost => Some(TcAttachType::Egress),
            Self::Underlay => None,
        }
    }

    const fn hook_name(self) -> &'static str {
        match self {
            Self::ToContainer | Self::FromHost => "egress",
            Self::FromContainer | Self::NodeIngress => "ingress",
            Self::Underlay => "xdp",
        }
    }
}

/// Packets and bytes for one reason code, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasonCounter {
    pub reason: u32,
    pub label: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// A program the kernel runs on an interface's TCX hook, whoever attached it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedProgram {
    /// "ingress" or "egress".
    pub hook: &'static str,
    pub id: u32,
    pub name: String,
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The program's return value (`TC_ACT_*` or `XDP_*`).
    pub action: i32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// Average run time per repetition, as the kernel measured it.
    pub duration: Duration,
}

/// Traffic to and from one overlay peer, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStat {
    /// The peer node's underlay address.
    pub node_ip: Ipv4Addr,
    pub tx_packets: u64,
    /// Bytes on the wire, outer headers included.
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// When the last packet went to / came from the peer (`None`: never).
    pub last_sent: Option<SystemTime>,
    pub last_received: Option<SystemTime>,
}

/// How the XDP member filter sits on the underlay. Whatever the choice, `hm_node_ingress`
/// checks membership too, so non-members' VXLAN is dropped either way; XDP only drops it
/// earlier, which pays off on NICs with driver XDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnderlayXdp {
    /// Native XDP, except on veth (there it would turn off the peer's GSO/TSO and cost more
    /// than the TC check) and on drivers without native XDP: no XDP there.
    #[default]
    Auto,
    /// Native (driver) XDP; an error where the driver has none.
    Native,
    /// Generic (SKB-mode) XDP: runs after GRO and copies every non-linear packet.
    Generic,
    /// No XDP program: `hm_node_ingress` alone filters members.
    Off,
}

/// Why the node-ingress program is on an interface; it stays while any reason holds.
const INGRESS_FOR_PORTS: u8 = 1 << 0;
const INGRESS_FOR_OVERLAY: u8 = 1 << 1;

/// A TCX (or XDP) link this dataplane owns, pinned at `<pin dir>/link_<program>_<ifindex>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LinkKey {
    program: ProgramKind,
    ifindex: u32,
}

impl LinkKey {
    fn pin_name(self) -> String {
        format!("link_{}_{}", self.program.name(), self.ifindex)
    }

    fn parse(file_name: &str) -> Option<Self> {
        let rest = file_name.strip_prefix("link_")?;
        let (program, ifindex) = rest.rsplit_once('_')?;
        Some(Self {
            program: ProgramKind::from_name(program)?,
            ifindex: ifindex.parse().ok()?,
        })
    }
}

struct Maps {
    endpoints: BpfHashMap<MapData, u32, Endpoint>,
    policy: ArrayOfMaps<MapData, MapData>,
    cidr: LpmTrie<MapData, [u8; 4], u32>,
    /// A second handle on `HM_CIDR_IDENTITY` (opened from its pin) for batched updates, which
    /// aya's typed map does not offer.
    cidr_raw: MapData,
    ports: BpfHashMap<MapData, PortKey, PortTarget>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, Counter>,
    policy_counters: PerCpuArray<MapData, Counter>,
    ct: BpfHashMap<MapData, CtKey, CtValue>,
    nat: BpfHashMap<MapData, CtKey, NatValue>,
    peers: BpfHashMap<MapData, u32, Peer>,
    peer_stats: PerCpuHashMap<MapData, u32, PeerStats>,
    tunnels: LpmTrie<MapData, [u8; 4], u32>,
}

/// The loaded programs, every map handle and every link.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    maps: Maps,
    links: BTreeMap<LinkKey, FdLink>,
    /// Why `hm_node_ingress` is attached to an interface (`INGRESS_FOR_*` bits).
    ingress_users: BTreeMap<u32, u8>,
    events: Option<RingBuf<MapData>>,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("pin_dir", &self.pin_dir)
            .field("links", &self.links.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

impl Dataplane {
    /// Loads every program (a verifier rejection fails here, at start), reuses the maps and
    /// links pinned under `pin_dir` by an earlier run, and points those links at the programs
    /// just loaded (an atomic `BPF_LINK_UPDATE` each: traffic never sees a gap).
    pub fn load(pin_dir: &Path) -> Result<Self, DataplaneError> {
        bpffs::prepare(pin_dir).map_err(|source| DataplaneError::PinDir {
            path: pin_dir.to_owned(),
            source,
        })?;
        let mut ebpf = load_object(pin_dir)?;
        for kind in ProgramKind::ALL {
            let name = kind.name();
            let program = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram(name))?;
            let path = pin_dir.join(format!("prog_{name}"));
            // The pin names the program this agent runs; an older one stays alive as long as
            // something (a link not yet updated) still uses it.
            let _ = std::fs::remove_file(&path);
            let pinned = match program {
                Program::SchedClassifier(p) => p
                    .load()
                    .map_err(|source| DataplaneError::LoadProgram { name, source })
                    .map(|()| p.pin(&path)),
                Program::Xdp(p) => p
                    .load()
                    .map_err(|source| DataplaneError::LoadProgram { name, source })
                    .map(|()| p.pin(&path)),
                _ => Ok(Ok(())),
            }?;
            pinned.map_err(|source| DataplaneError::Pin { path, source })?;
            tracing::debug!(program = name, "loaded");
        }
        let maps = Maps {
            endpoints: take(&mut ebpf, names::MAP_ENDPOINTS)?,
            policy: take(&mut ebpf, names::MAP_POLICY)?,
            cidr: take(&mut ebpf, names::MAP_CIDR_IDENTITY)?,
            cidr_raw: MapData::from_pin(pin_dir.join(names::MAP_CIDR_IDENTITY))
                .map_err(map_err(names::MAP_CIDR_IDENTITY))?,
            ports: take(&mut ebpf, names::MAP_PORTS)?,
            config: take(&mut ebpf, names::MAP_CONFIG)?,
            counters: take(&mut ebpf, names::MAP_COUNTERS)?,
            policy_counters: take(&mut ebpf, names::MAP_POLICY_COUNTERS)?,
            ct: take(&mut ebpf, names::MAP_CT)?,
            nat: take(&mut ebpf, names::MAP_NAT)?,
            peers: take(&mut ebpf, names::MAP_PEERS)?,
            peer_stats: take(&mut ebpf, names::MAP_PEER_STATS)?,
            tunnels: take(&mut ebpf, names::MAP_TUNNELS)?,
        };
        let events = Some(take(&mut ebpf, names::MAP_EVENTS)?);
        let mut dataplane = Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            maps,
            links: BTreeMap::new(),
            ingress_users: BTreeMap::new(),
            events,
        };
        dataplane.adopt_pinned_links()?;
        tracing::info!(pin_dir = %pin_dir.display(), programs = ProgramKind::ALL.len(), links = dataplane.links.len(), "eBPF dataplane loaded");
        Ok(dataplane)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn classifier(&mut self, kind: ProgramKind) -> Result<&mut SchedClassifier, DataplaneError> {
        let name = kind.name();
        match self.ebpf.program_mut(name) {
            Some(Program::SchedClassifier(p)) => Ok(p),
            _ => Err(DataplaneError::MissingProgram(name)),
        }
    }

    /// Takes over the links an earlier run pinned: each is updated in place to run the program
    /// this run loaded. Links whose interface is gone are unpinned.
    fn adopt_pinned_links(&mut self) -> Result<(), DataplaneError> {
        let entries =
            std::fs::read_dir(&self.pin_dir).map_err(|source| DataplaneError::PinDir {
                path: self.pin_dir.clone(),
                source,
            })?;
        let mut found: Vec<(LinkKey, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let key = LinkKey::parse(e.file_name().to_str()?)?;
                Some((key, e.path()))
            })
            .collect();
        found.sort();
        for (key, path) in found {
            match self.adopt(key, &path) {
                Ok(link) => {
                    tracing::info!(
                        program = key.program.name(),
                        ifindex = key.ifindex,
                        "reusing pinned link"
                    );
                    self.links.insert(key, link);
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "dropping a stale pinned link");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }

    fn adopt(&mut self, key: LinkKey, path: &Path) -> Result<FdLink, DataplaneError> {
        let pinned = PinnedLink::from_pin(path).map_err(|source| DataplaneError::Link {
            path: path.to_owned(),
            source,
        })?;
        if key.program == ProgramKind::Underlay {
            return self.adopt_xdp(key, path, FdLink::from(pinned));
        }
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| {
            DataplaneError::Link {
                path: path.to_owned(),
                source,
            }
        })?;
        let program = self.classifier(key.program)?;
        let attach = |source| DataplaneError::Attach {
            program: key.program.name(),
            ifindex: key.ifindex,
            source,
        };
        let id = program.attach_to_link(link).map_err(attach)?;
        let link = program.take_link(id).map_err(attach)?;
        FdLink::try_from(link).map_err(|source| DataplaneError::Link {
            path: path.to_owned(),
            source,
        })
    }

    /// An XDP link an earlier run pinned, switched to this run's program.
    fn adopt_xdp(
        &mut self,
        key: LinkKey,
        path: &Path,
        link: FdLink,
    ) -> Result<FdLink, DataplaneError> {
        let link_err = |source| DataplaneError::Link {
            path: path.to_owned(),
            source,
        };
        let link = XdpLink::try_from(link).map_err(link_err)?;
        let program = self.xdp()?;
        let attach = |source| DataplaneError::Attach {
            program: key.program.name(),
            ifindex: key.ifindex,
            source,
        };
        let id = program.attach_to_link(link).map_err(attach)?;
        let link = program.take_link(id).map_err(attach)?;
        FdLink::try_from(link).map_err(link_err)
    }

    fn xdp(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let name = ProgramKind::Underlay.name();
        match self.ebpf.program_mut(name) {
            Some(Program::Xdp(p)) => Ok(p),
            _ => Err(DataplaneError::MissingProgram(name)),
        }
    }

    /// Attaches the XDP program to `ifindex` through a pinned link, unless it already is.
    fn attach_xdp(&mut self, ifindex: u32, mode: UnderlayXdp) -> Result<(), DataplaneError> {
        let key = LinkKey {
            program: ProgramKind::Underlay,
            ifindex,
        };
        if self.links.contains_key(&key) {
            return Ok(());
        }
        let program = self.xdp()?;
        let attach_err = |source| DataplaneError::Attach {
            program: key.program.name(),
            ifindex,
            source,
        };
        let id = match mode {
            UnderlayXdp::Off => return Ok(()),
            UnderlayXdp::Generic => program.attach(ifindex, XdpMode::Skb),
            UnderlayXdp::Native => program.attach(ifindex, XdpMode::Driver),
            UnderlayXdp::Auto => {
                let name = if_indextoname(ifindex).unwrap_or_default();
                let driver = sys::driver_name(&name).unwrap_or_default();
                if driver == "veth" {
                    tracing::info!(iface = %name, "veth underlay: no XDP (it would turn off the peer's GSO); hm_node_ingress filters members");
                    return Ok(());
                }
                match program.attach(ifindex, XdpMode::Driver) {
                    Ok(id) => Ok(id),
                    Err(err) => {
                        tracing::info!(iface = %name, %driver, error = %err, "no native XDP on the underlay; hm_node_ingress filters members");
                        return Ok(());
                    }
                }
            }
        }
        .map_err(attach_err)?;
        let link = program.take_link(id).map_err(attach_err)?;
        self.keep(key, link)?;
        tracing::debug!(program = key.program.name(), ifindex, ?mode, "attached");
        Ok(())
    }

    /// Pins a link just made under its key's name and keeps it.
    fn keep<L>(&mut self, key: LinkKey, link: L) -> Result<(), DataplaneError>
    where
        FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
    {
        let path = self.pin_dir.join(key.pin_name());
        let link = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
            path: path.clone(),
            source,
        })?;
        let link =
            bpffs::pin_link(link, &path).map_err(|source| DataplaneError::Pin { path, source })?;
        self.links.insert(key, link);
        Ok(())
    }

    /// Attaches `kind` to `ifindex` through a pinned TCX link, unless it already is.
    fn attach(&mut self, kind: ProgramKind, ifindex: u32) -> Result<(), DataplaneError> {
        let key = LinkKey {
            program: kind,
            ifindex,
        };
        if self.links.contains_key(&key) {
            return Ok(());
        }
        let Some(attach_type) = kind.hook() else {
            return Err(DataplaneError::MissingProgram(kind.name()));
        };
        let program = self.classifier(kind)?;
        let attach_err = |source| DataplaneError::Attach {
            program: kind.name(),
            ifindex,
            source,
        };
        let id = program
            .attach(
                ifindex,
                TcAttach::Tcx {
                    attach_type,
                    order: LinkOrder::default(),
                },
            )
            .map_err(attach_err)?;
        let link = program.take_link(id).map_err(attach_err)?;
        self.keep(key, link)?;
        tracing::debug!(program = kind.name(), ifindex, "attached");
        Ok(())
    }

    /// Unpins and closes a link: the kernel detaches the program.
    fn detach(&mut self, kind: ProgramKind, ifindex: u32) -> Result<(), DataplaneError> {
        let key = LinkKey {
            program: kind,
            ifindex,
        };
        let path = self.pin_dir.join(key.pin_name());
        bpffs::unpin(&path).map_err(|source| DataplaneError::Unpin { path, source })?;
        drop(self.links.remove(&key));
        Ok(())
    }

    /// `hm_from_container` on the host veth's ingress, `hm_to_container` on its egress.
    pub fn attach_container(&mut self, host_ifindex: u32) -> Result<(), DataplaneError> {
        self.attach(ProgramKind::FromContainer, host_ifindex)?;
        self.attach(ProgramKind::ToContainer, host_ifindex)
    }

    pub fn detach_container(&mut self, host_ifindex: u32) -> Result<(), DataplaneError> {
        self.detach(ProgramKind::FromContainer, host_ifindex)?;
        self.detach(ProgramKind::ToContainer, host_ifindex)
    }

    /// `hm_from_host` on the egress of `hivemind0` (index `ifindex`), where the node routes
    /// the cluster CIDR: the node's own traffic to containers on other nodes.
    pub fn attach_host(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.attach(ProgramKind::FromHost, ifindex)
    }

    pub fn detach_host(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.detach(ProgramKind::FromHost, ifindex)
    }

    /// `hm_node_ingress` on the uplink's ingress (published ports).
    pub fn attach_node_ingress(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        let ifindex = if_nametoindex(ifname)?;
        self.claim_ingress(ifindex, INGRESS_FOR_PORTS)
    }

    /// Detaches `hm_node_ingress` for published ports; it stays while the overlay needs it.
    pub fn detach_node_ingress(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        let ifindex = if_nametoindex(ifname)?;
        self.release_ingress(ifindex, INGRESS_FOR_PORTS)
    }

    fn claim_ingress(&mut self, ifindex: u32, why: u8) -> Result<(), DataplaneError> {
        self.attach(ProgramKind::NodeIngress, ifindex)?;
        *self.ingress_users.entry(ifindex).or_default() |= why;
        Ok(())
    }

    fn release_ingress(&mut self, ifindex: u32, why: u8) -> Result<(), DataplaneError> {
        let users = self.ingress_users.entry(ifindex).or_default();
        *users &= !why;
        if *users == 0 {
            self.ingress_users.remove(&ifindex);
            self.detach(ProgramKind::NodeIngress, ifindex)?;
        }
        Ok(())
    }

    /// The overlay's receiving side on the underlay interface: `hm_underlay` (XDP, member
    /// filter) as `xdp` says, and `hm_node_ingress` on its TCX ingress (member check, VXLAN
    /// decapsulation, delivery; published ports too). Idempotent.
    pub fn attach_underlay(
        &mut self,
        ifname: &str,
        xdp: UnderlayXdp,
    ) -> Result<(), DataplaneError> {
        let ifindex = if_nametoindex(ifname)?;
        self.claim_ingress(ifindex, INGRESS_FOR_OVERLAY)?;
        self.attach_xdp(ifindex, xdp)
    }

    /// Undoes [`Self::attach_underlay`]; `hm_node_ingress` stays while ports are published.
    pub fn detach_underlay(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        let ifindex = if_nametoindex(ifname)?;
        self.detach(ProgramKind::Underlay, ifindex)?;
        self.release_ingress(ifindex, INGRESS_FOR_OVERLAY)
    }

    /// Makes the cluster's members exactly `peers` (node underlay address → peer). Traffic
    /// statistics start for new peers and are kept for those that stay.
    pub fn set_peers(&mut self, peers: &[(Ipv4Addr, Peer)]) -> Result<(), DataplaneError> {
        let wanted: BTreeSet<u32> = peers.iter().map(|(ip, _)| wire(*ip)).collect();
        let counted: BTreeSet<u32> = self.maps.peer_stats.keys().filter_map(Result::ok).collect();
        for (ip, peer) in peers {
            let key = wire(*ip);
            self.maps
                .peers
                .insert(&key, peer, 0)
                .map_err(map_err(names::MAP_PEERS))?;
            if !counted.contains(&key) {
                let cpus = aya::util::nr_cpus().map_or(1, |n| n.get() as usize);
                let zeros = PerCpuValues::try_from(vec![PeerStats::default(); cpus]).map_err(
                    |io_error| {
                        map_err(names::MAP_PEER_STATS)(MapError::SyscallError(
                            aya::sys::SyscallError {
                                call: "nr_cpus",
                                io_error,
                            },
                        ))
                    },
                )?;
                self.maps
                    .peer_stats
                    .insert(&key, zeros, 0)
                    .map_err(map_err(names::MAP_PEER_STATS))?;
            }
        }
        let stale: Vec<u32> = self
            .maps
            .peers
            .keys()
            .filter_map(Result::ok)
            .chain(counted.iter().copied())
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            let _ = self.maps.peers.remove(&key);
            let _ = self.maps.peer_stats.remove(&key);
        }
        Ok(())
    }

    /// Makes the tunnels exactly `tunnels`: each node's container subnet → its underlay
    /// address. Traffic to an address in one of these subnets that `HM_ENDPOINTS` does not
    /// know goes to that node (the receiving node resolves the container).
    pub fn set_tunnels(&mut self, tunnels: &[(Ipv4Net, Ipv4Addr)]) -> Result<(), DataplaneError> {
        let wanted: BTreeSet<([u8; 4], u32)> = tunnels
            .iter()
            .map(|(net, _)| (net.network().octets(), u32::from(net.prefix_len())))
            .collect();
        for (net, node) in tunnels {
            let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
            self.maps
                .tunnels
                .insert(&key, &wire(*node), 0)
                .map_err(map_err(names::MAP_TUNNELS))?;
        }
        let stale: Vec<Key<[u8; 4]>> = self
            .maps
            .tunnels
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.data(), k.prefix_len())))
            .collect();
        for key in stale {
            let _ = self.maps.tunnels.remove(&key);
        }
        Ok(())
    }

    /// A container on another node: address, its app's identity, and the underlay address of
    /// the node that hosts it (the "ipcache" entry the sender needs to pick the tunnel and
    /// to know the peer's identity for egress policy).
    pub fn upsert_remote_endpoint(
        &mut self,
        ip: Ipv4Addr,
        identity: u32,
        node_ip: Ipv4Addr,
    ) -> Result<(), DataplaneError> {
        self.upsert_endpoint(
            ip,
            Endpoint {
                identity,
                flags: FLAG_REMOTE,
                node_ip: wire(node_ip),
                ..Endpoint::default()
            },
        )
    }

    /// Makes the remote endpoints exactly `remotes` (address, identity, node underlay
    /// address): adds and updates those, removes `FLAG_REMOTE` entries not among them (also
    /// those an earlier run left pinned). Local endpoints are not touched.
    pub fn set_remote_endpoints(
        &mut self,
        remotes: &[(Ipv4Addr, u32, Ipv4Addr)],
    ) -> Result<(), DataplaneError> {
        let wanted: BTreeMap<u32, Endpoint> = remotes
            .iter()
            .map(|&(ip, identity, node_ip)| {
                let endpoint = Endpoint {
                    identity,
                    flags: FLAG_REMOTE,
                    node_ip: wire(node_ip),
                    ..Endpoint::default()
                };
                (wire(ip), endpoint)
            })
            .collect();
        let mut stale = Vec::new();
        let mut current = BTreeMap::new();
        for entry in &self.maps.endpoints {
            let (key, endpoint) = entry.map_err(map_err(names::MAP_ENDPOINTS))?;
            if endpoint.flags & FLAG_REMOTE == 0 {
                continue;
            }
            if wanted.contains_key(&key) {
                current.insert(key, endpoint);
            } else {
                stale.push(key);
            }
        }
        for (key, endpoint) in &wanted {
            if current.get(key) != Some(endpoint) {
                self.maps
                    .endpoints
                    .insert(key, endpoint, 0)
                    .map_err(map_err(names::MAP_ENDPOINTS))?;
            }
        }
        for key in stale {
            match self.maps.endpoints.remove(&key) {
                Ok(()) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(map_err(names::MAP_ENDPOINTS)(err)),
            }
        }
        Ok(())
    }

    /// Traffic per peer, summed over CPUs, in address order.
    pub fn peer_stats(&self) -> Result<Vec<PeerStat>, DataplaneError> {
        let now_wall = SystemTime::now();
        let now_mono = monotonic_ns();
        let at = |ns: u64| {
            (ns != 0).then(|| now_wall - Duration::from_nanos(now_mono.saturating_sub(ns)))
        };
        let mut out = Vec::new();
        for key in self.maps.peer_stats.keys() {
            let key = key.map_err(map_err(names::MAP_PEER_STATS))?;
            let values = match self.maps.peer_stats.get(&key, 0) {
                Ok(values) => values,
                Err(MapError::KeyNotFound) => continue,
                Err(err) => return Err(map_err(names::MAP_PEER_STATS)(err)),
            };
            let sum = values.iter().fold(PeerStats::default(), |a, s| PeerStats {
                tx_packets: a.tx_packets + s.tx_packets,
                tx_bytes: a.tx_bytes + s.tx_bytes,
                rx_packets: a.rx_packets + s.rx_packets,
                rx_bytes: a.rx_bytes + s.rx_bytes,
                last_tx_ns: a.last_tx_ns.max(s.last_tx_ns),
                last_rx_ns: a.last_rx_ns.max(s.last_rx_ns),
            });
            out.push(PeerStat {
                node_ip: Ipv4Addr::from(key.to_ne_bytes()),
                tx_packets: sum.tx_packets,
                tx_bytes: sum.tx_bytes,
                rx_packets: sum.rx_packets,
                rx_bytes: sum.rx_bytes,
                last_sent: at(sum.last_tx_ns),
                last_received: at(sum.last_rx_ns),
            });
        }
        out.sort_by_key(|s| s.node_ip);
        Ok(out)
    }

    pub fn upsert_endpoint(
        &mut self,
        ip: Ipv4Addr,
        endpoint: Endpoint,
    ) -> Result<(), DataplaneError> {
        self.maps
            .endpoints
            .insert(&wire(ip), &endpoint, 0)
            .map_err(map_err(names::MAP_ENDPOINTS))
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), DataplaneError> {
        match self.maps.endpoints.remove(&wire(ip)) {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(map_err(names::MAP_ENDPOINTS)(err)),
        }
    }

    /// Installs a complete new rule set. The rules go into a fresh inner map that replaces
    /// slot 0 of `HM_POLICY` in one update, so a packet sees the old set or the new one, never
    /// a mix. CIDR identities the new rules need are added before the swap; those no longer
    /// wanted are removed after it, so no address resolves to nothing in between.
    pub fn replace_policy(
        &mut self,
        entries: &[(PolicyKey, PolicyValue)],
        cidrs: &[(ipnet::Ipv4Net, u32)],
    ) -> Result<(), DataplaneError> {
        let max = usize::try_from(MAX_RULE_ENTRIES).unwrap_or(usize::MAX);
        if entries.len() > max {
            return Err(DataplaneError::TooManyRules {
                count: entries.len(),
                max,
            });
        }
        let inner = MapData::create(
            aya_obj::Map::new_from_params(
                BPF_MAP_TYPE_HASH,
                u32::try_from(size_of::<PolicyKey>()).unwrap_or(0),
                u32::try_from(size_of::<PolicyValue>()).unwrap_or(0),
                MAX_RULE_ENTRIES,
                BPF_F_NO_PREALLOC,
            ),
            RULES_MAP_NAME,
            None,
        )
        .map_err(map_err(RULES_MAP_NAME))?;
        sys::update_batch(inner.fd().as_fd(), entries).map_err(|source| DataplaneError::Batch {
            map: RULES_MAP_NAME,
            source,
        })?;

        let wanted: BTreeMap<[u8; 4], (u32, u32)> = cidrs
            .iter()
            .map(|(net, identity)| {
                (
                    net.network().octets(),
                    (u32::from(net.prefix_len()), *identity),
                )
            })
            .collect();
        let keyed: Vec<(Key<[u8; 4]>, u32)> = cidrs
            .iter()
            .map(|(net, identity)| {
                (
                    Key::new(u32::from(net.prefix_len()), net.network().octets()),
                    *identity,
                )
            })
            .collect();
        let stale: Vec<Key<[u8; 4]>> = self
            .maps
            .cidr
            .keys()
            .filter_map(Result::ok)
            .filter(|key| {
                wanted
                    .get(&key.data())
                    .is_none_or(|(prefix, _)| *prefix != key.prefix_len())
            })
            .collect();
        if let Err(err) = sys::update_batch(self.maps.cidr_raw.fd().as_fd(), &keyed) {
            // Kernels without batch ops on LPM tries: one syscall per prefix.
            tracing::debug!(error = %err, "batched CIDR update refused; updating one by one");
            for (key, identity) in &keyed {
                self.maps
                    .cidr
                    .insert(key, identity, 0)
                    .map_err(map_err(names::MAP_CIDR_IDENTITY))?;
            }
        }

        self.maps
            .policy
            .set(0, &inner, 0)
            .map_err(map_err(names::MAP_POLICY))?;

        for key in &stale {
            match self.maps.cidr.remove(key) {
                Ok(()) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(map_err(names::MAP_CIDR_IDENTITY)(err)),
            }
        }
        tracing::debug!(
            rules = entries.len(),
            cidrs = cidrs.len(),
            "policy replaced"
        );
        Ok(())
    }

    /// Makes `HM_PORTS` exactly `ports`.
    pub fn set_ports(&mut self, ports: &[(PortKey, PortTarget)]) -> Result<(), DataplaneError> {
        let wanted: BTreeSet<(u16, u8)> = ports.iter().map(|(k, _)| (k.port, k.protocol)).collect();
        for (key, target) in ports {
            self.maps
                .ports
                .insert(key, target, 0)
                .map_err(map_err(names::MAP_PORTS))?;
        }
        let stale: Vec<PortKey> = self
            .maps
            .ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.port, k.protocol)))
            .collect();
        for key in stale {
            let _ = self.maps.ports.remove(&key);
        }
        Ok(())
    }

    pub fn set_config(&mut self, config: Config) -> Result<(), DataplaneError> {
        self.maps
            .config
            .set(0, &config, 0)
            .map_err(map_err(names::MAP_CONFIG))
    }

    pub fn config(&self) -> Result<Config, DataplaneError> {
        self.maps
            .config
            .get(&0, 0)
            .map_err(map_err(names::MAP_CONFIG))
    }

    /// Every reason's packets and bytes, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<ReasonCounter>, DataplaneError> {
        (0..reason::COUNT)
            .map(|reason| {
                let sum = sum_per_cpu(&self.maps.counters, reason, names::MAP_COUNTERS)?;
                Ok(ReasonCounter {
                    reason,
                    label: reason::label(reason),
                    packets: sum.packets,
                    bytes: sum.bytes,
                })
            })
            .collect()
    }

    /// Policy drops by policy id (0: default deny), only ids that dropped something.
    pub fn policy_counters(&self) -> Result<BTreeMap<u32, Counter>, DataplaneError> {
        let mut out = BTreeMap::new();
        for id in 0..MAX_POLICIES {
            let sum = sum_per_cpu(&self.maps.policy_counters, id, names::MAP_POLICY_COUNTERS)?;
            if sum.packets > 0 {
                out.insert(id, sum);
            }
        }
        Ok(out)
    }

    /// Number of tracked flows (`HM_CT`) and reverse translations (`HM_NAT`).
    pub fn tracked(&self) -> (usize, usize) {
        (
            self.maps.ct.keys().flatten().count(),
            self.maps.nat.keys().flatten().count(),
        )
    }

    /// Forgets every tracked flow and translation (tests and benchmarks start clean with it).
    pub fn flush_conntrack(&mut self) {
        let keys: Vec<CtKey> = self.maps.ct.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = self.maps.ct.remove(&key);
        }
        let keys: Vec<CtKey> = self.maps.nat.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = self.maps.nat.remove(&key);
        }
    }

    /// The ring buffer, for the one reader task. `None` once taken.
    pub(super) fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Reads the events waiting in the ring buffer (when no reader task took it).
    pub fn drain_events(&mut self) -> Vec<VerdictEvent> {
        let mut out = Vec::new();
        if let Some(ring) = self.events.as_mut() {
            while let Some(item) = ring.next() {
                if let Some(event) = super::events::decode(&item) {
                    out.push(event);
                }
            }
        }
        out
    }

    /// What the kernel runs on `ifname`'s TCX hooks, ingress first, in run order — the truth
    /// to compare [`Self::status`] with (Debian 12's bpftool does not list TCX yet).
    pub fn tcx_programs(&self, ifname: &str) -> Result<Vec<AttachedProgram>, DataplaneError> {
        let ifindex = if_nametoindex(ifname)?;
        let mut out = Vec::new();
        for (hook, attach_type) in [
            ("ingress", TcAttachType::Ingress),
            ("egress", TcAttachType::Egress),
        ] {
            let (_, programs) =
                SchedClassifier::query_tcx(ifindex, attach_type).map_err(|source| {
                    DataplaneError::Query {
                        ifname: ifname.to_owned(),
                        source,
                    }
                })?;
            out.extend(programs.iter().map(|p| AttachedProgram {
                hook,
                id: p.id(),
                name: p.name_as_str().unwrap_or_default().to_owned(),
            }));
        }
        Ok(out)
    }

    /// Programs with their kernel ids and where each is attached.
    pub fn status(&self) -> proto::DataplaneStatus {
        let programs = ProgramKind::ALL
            .into_iter()
            .filter_map(|kind| {
                let program = self.ebpf.program(kind.name())?;
                let attached = self
                    .links
                    .keys()
                    .filter(|k| k.program == kind)
                    .map(|k| {
                        let ifname =
                            if_indextoname(k.ifindex).unwrap_or_else(|| format!("if{}", k.ifindex));
                        format!("{ifname}/{}", kind.hook_name())
                    })
                    .collect();
                Some(proto::ProgramStatus {
                    name: kind.name().to_owned(),
                    kind: match program {
                        Program::SchedClassifier(_) => "tc",
                        Program::Xdp(_) => "xdp",
                        _ => "other",
                    }
                    .into(),
                    id: program.info().map_or(0, |info| info.id()),
                    attached,
                })
            })
            .collect();
        proto::DataplaneStatus {
            pin_path: self.pin_dir.display().to_string(),
            programs,
            // The network fields are the node network's to fill (api::service::health).
            ..proto::DataplaneStatus::default()
        }
    }

    /// Runs `kind` once per `repeat` on `packet` with `BPF_PROG_TEST_RUN` (the maps are the
    /// live ones). TC programs see the test skb on the loopback device (ifindex 1).
    pub fn test_run(
        &self,
        kind: ProgramKind,
        packet: &[u8],
        repeat: u32,
    ) -> Result<RunResult, DataplaneError> {
        let name = kind.name();
        let program = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: repeat.max(1),
            ..TestRunOptions::default()
        };
        let result = match program {
            Program::SchedClassifier(p) => p.test_run(opts),
            Program::Xdp(p) => p.test_run(opts),
            _ => return Err(DataplaneError::MissingProgram(name)),
        }
        .map_err(|source| DataplaneError::TestRun {
            program: name,
            source,
        })?;
        out.truncate(result.data_size_out as usize);
        Ok(RunResult {
            action: i32::from_ne_bytes(result.return_value.to_ne_bytes()),
            packet: out,
            duration: result.duration,
        })
    }
}

/// Loads the object against the maps pinned in `pin_dir`. A pinned map whose layout no longer
/// matches the object (an upgrade changed the ABI) is unpinned and created afresh: the old
/// programs keep their reference to it until their links are switched to the new programs, so
/// only the state of that one map starts over.
fn load_object(pin_dir: &Path) -> Result<Ebpf, DataplaneError> {
    bpffs::load_object(OBJECT, pin_dir, &names::ALL_MAPS).map_err(|err| match err {
        bpffs::LoadError::Object(source) => DataplaneError::LoadObject(source),
        bpffs::LoadError::Unpin { path, source } => DataplaneError::Unpin { path, source },
    })
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which outlives the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn sum_per_cpu(
    map: &PerCpuArray<MapData, Counter>,
    index: u32,
    name: &'static str,
) -> Result<Counter, DataplaneError> {
    let values = map.get(&index, 0).map_err(map_err(name))?;
    Ok(values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    }))
}

fn if_nametoindex(name: &str) -> Result<u32, DataplaneError> {
    let c = CString::new(name).map_err(|_| DataplaneError::Interface {
        name: name.to_owned(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(DataplaneError::Interface {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(index)
    }
}

fn if_indextoname(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let rc = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if rc.is_null() {
        return None;
    }
    CStr::from_bytes_until_nul(&buf)
        .ok()
        .map(|s| s.to_string_lossy().into_owned())
}

/// aya reports a missing key as `KeyNotFound` from lookups but as the syscall's ENOENT from
/// deletes.
fn is_not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::ENOENT)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{LinkKey, ProgramKind};

    #[test]
    fn link_pin_names_round_trip() {
        for program in ProgramKind::ALL {
            let key = LinkKey {
                program,
                ifindex: 4711,
            };
            assert_eq!(LinkKey::parse(&key.pin_name()), Some(key));
        }
        assert_eq!(
            LinkKey::parse("link_hm_from_container_7").map(|k| (k.program, k.ifindex)),
            Some((ProgramKind::FromContainer, 7))
        );
        assert_eq!(
            LinkKey::parse("link_hm_underlay_3").map(|k| (k.program, k.ifindex)),
            Some((ProgramKind::Underlay, 3)),
            "the XDP link on the underlay"
        );
        for other in [
            "HM_CT",
            "prog_hm_from_container",
            "link_hm_unknown_3",
            "link_hm_to_container_x",
        ] {
            assert_eq!(LinkKey::parse(other), None, "{other}");
        }
    }
}
