//! Every map the programs share, BTF-defined (the `.maps` section) so libbpf tools accept the
//! object too, and pinned by name under the agent's pin directory so they outlive the agent.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    btf_maps::{
        Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf,
    },
    helpers::{bpf_ktime_get_ns, bpf_ringbuf_query},
    macros::btf_map,
};
use hivemind_common::{
    Counter,
    config::Config,
    ct::{
        CT_MAX_ENTRIES, CtKey, CtValue, NAT_MAX_ENTRIES, NatValue, PORTS_MAX_ENTRIES, PortKey,
        PortTarget,
    },
    endpoint::{self, Endpoint},
    event::{EVENTS_BYTES, EVENTS_WAKEUP_BYTES},
    overlay::{PEERS_MAX_ENTRIES, Peer, PeerStats, TUNNELS_MAX_ENTRIES},
    policy::{CIDR_MAX_ENTRIES, MAX_POLICIES, MAX_RULE_ENTRIES, PolicyKey, PolicyValue},
    reason,
};

/// Packets and bytes by reason code.
#[btf_map(name = "HM_COUNTERS", pin_by_name)]
pub static COUNTERS: PerCpuArray<Counter, { reason::COUNT as usize }> = PerCpuArray::new();

/// Policy drops by policy id (slot 0: default deny, no policy named).
#[btf_map(name = "HM_POLICY_COUNTERS", pin_by_name)]
pub static POLICY_COUNTERS: PerCpuArray<Counter, { MAX_POLICIES as usize }> = PerCpuArray::new();

/// Container address (wire order) → endpoint.
#[btf_map(name = "HM_ENDPOINTS", pin_by_name)]
pub static ENDPOINTS: HashMap<u32, Endpoint, { endpoint::MAX_ENTRIES as usize }> = HashMap::new();

/// The rule set the agent built, in slot 0. The inner map is not preallocated: the agent keeps
/// two of them alive for a moment while it swaps, and most rule sets are small.
pub type Rules =
    HashMap<PolicyKey, PolicyValue, { MAX_RULE_ENTRIES as usize }, { BPF_F_NO_PREALLOC as usize }>;

#[btf_map(name = "HM_POLICY", pin_by_name)]
pub static POLICY: ArrayOfMaps<Rules, 1> = ArrayOfMaps::new();

/// CIDR → identity, for peers that are not endpoints.
#[btf_map(name = "HM_CIDR_IDENTITY", pin_by_name)]
pub static CIDR_IDENTITY: LpmTrie<[u8; 4], u32, { CIDR_MAX_ENTRIES as usize }> = LpmTrie::new();

/// Allowed flows by forward 5-tuple.
#[btf_map(name = "HM_CT", pin_by_name)]
pub static CT: LruHashMap<CtKey, CtValue, { CT_MAX_ENTRIES as usize }> = LruHashMap::new();

/// Published ports.
#[btf_map(name = "HM_PORTS", pin_by_name)]
pub static PORTS: HashMap<PortKey, PortTarget, { PORTS_MAX_ENTRIES as usize }> = HashMap::new();

/// Reverse translations of published-port flows, keyed by the reply as the container sends it.
#[btf_map(name = "HM_NAT", pin_by_name)]
pub static NAT: LruHashMap<CtKey, NatValue, { NAT_MAX_ENTRIES as usize }> = LruHashMap::new();

#[btf_map(name = "HM_EVENTS", pin_by_name)]
pub static EVENTS: RingBuf<(), { EVENTS_BYTES as usize }> = RingBuf::new();

/// Flags for writing one event: no wakeup of the agent's reader (it drains the ring on a
/// timer) until [`EVENTS_WAKEUP_BYTES`] are waiting.
#[inline(always)]
pub fn events_wakeup_flags() -> u64 {
    // SAFETY: the helper only reads the ring's producer and consumer positions. The pointer
    // is the map definition itself, which the loader relocates to the ring buffer map —
    // exactly what aya's own (crate-private) `as_ptr` hands to `bpf_ringbuf_output`.
    let waiting = unsafe {
        bpf_ringbuf_query(
            core::ptr::from_ref(&EVENTS).cast_mut().cast(),
            u64::from(BPF_RB_AVAIL_DATA),
        )
    };
    if waiting >= EVENTS_WAKEUP_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

#[btf_map(name = "HM_CONFIG", pin_by_name)]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Cluster members: node underlay address (wire order) → peer.
#[btf_map(name = "HM_PEERS", pin_by_name)]
pub static PEERS: HashMap<u32, Peer, { PEERS_MAX_ENTRIES as usize }> = HashMap::new();

/// Traffic per peer, per CPU (entries made by the agent, updated here).
#[btf_map(name = "HM_PEER_STATS", pin_by_name)]
pub static PEER_STATS: PerCpuHashMap<u32, PeerStats, { PEERS_MAX_ENTRIES as usize }> =
    PerCpuHashMap::new();

/// Node container subnet → node underlay address (wire order).
#[btf_map(name = "HM_TUNNELS", pin_by_name)]
pub static TUNNELS: LpmTrie<[u8; 4], u32, { TUNNELS_MAX_ENTRIES as usize }> = LpmTrie::new();

/// The agent's switches; all zero until it writes them.
#[inline(always)]
pub fn config() -> Config {
    CONFIG.get(0).copied().unwrap_or_default()
}

#[inline(always)]
fn add(counter: *mut Counter, bytes: u32) {
    // SAFETY: a per-CPU slot returned by the map lookup; this program owns it on this CPU
    // until it returns (no preemption inside a BPF program run).
    unsafe {
        (*counter).packets += 1;
        (*counter).bytes += u64::from(bytes);
    }
}

#[inline(always)]
pub fn count(reason: u32, bytes: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(reason) {
        add(slot, bytes);
    }
}

#[inline(always)]
pub fn count_policy(policy_id: u32, bytes: u32) {
    if let Some(slot) = POLICY_COUNTERS.get_ptr_mut(policy_id) {
        add(slot, bytes);
    }
}

/// Counts a packet sent to (`rx == false`) or received from peer `node_ip`.
#[inline(always)]
pub fn count_peer(node_ip: u32, bytes: u32, rx: bool) {
    if let Some(stats) = PEER_STATS.get_ptr_mut(&node_ip) {
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: this CPU's slot of a per-CPU value the lookup just returned; no other
        // program touches it until this one returns.
        unsafe {
            if rx {
                (*stats).rx_packets += 1;
                (*stats).rx_bytes += u64::from(bytes);
                (*stats).last_rx_ns = now;
            } else {
                (*stats).tx_packets += 1;
                (*stats).tx_bytes += u64::from(bytes);
                (*stats).last_tx_ns = now;
            }
        }
    }
}
