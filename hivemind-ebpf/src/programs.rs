//! The programs. Each entry point is thin: it calls a `try_` function that returns a
//! [`Verdict`] (action + reason), and [`conclude`] counts it, emits the event and returns the
//! action — so every path, error paths included, ends in an explicit, counted verdict.

use core::mem::size_of;

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_F_INGRESS, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK,
        TC_ACT_REDIRECT, TC_ACT_SHOT, bpf_fib_lookup, xdp_action,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh,
        bpf_redirect_peer,
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use hivemind_common::{
    config::{Config, FLAG_EVENTS_FORWARDED},
    ct::{CtKey, PortKey},
    endpoint::{Endpoint, FLAG_LOCAL, FLAG_REMOTE},
    event::{VERDICT_DROPPED, VERDICT_FORWARDED, VerdictEvent},
    identity,
    policy::{DIRECTION_EGRESS, DIRECTION_INGRESS},
    reason,
};

use crate::{
    maps::{
        ENDPOINTS, EVENTS, NAT, PEERS, PORTS, TUNNELS, config, count, count_peer, count_policy,
        events_wakeup_flags,
    },
    overlay::{self, vxlan_port},
    packet::{self, ETH_HLEN, Flow, PROTO_TCP, PROTO_UDP, ParseError, Parsed},
    policy::{CtState, Decision, ct_create, ct_lookup, evaluate, forward_key, identity_of},
};

const AF_INET: u8 = 2;

/// What a program decided, and everything its event reports.
#[derive(Clone, Copy)]
struct Verdict {
    action: i32,
    reason: u32,
    direction: u8,
    policy_id: u32,
    src_identity: u32,
    dst_identity: u32,
    /// Report a forwarded packet (a new flow) when forwarded events are switched on.
    new_flow: bool,
}

impl Verdict {
    #[inline(always)]
    const fn new(action: i32, reason: u32) -> Self {
        Self {
            action,
            reason,
            direction: 0,
            policy_id: 0,
            src_identity: 0,
            dst_identity: 0,
            new_flow: false,
        }
    }

    #[inline(always)]
    const fn drop(reason: u32) -> Self {
        Self::new(TC_ACT_SHOT, reason)
    }

    #[inline(always)]
    const fn pass(reason: u32) -> Self {
        Self::new(TC_ACT_OK, reason)
    }

    /// This verdict (identities, direction, policy) turned into a drop for `reason`.
    #[inline(always)]
    const fn into_drop(mut self, reason: u32) -> Self {
        self.action = Self::drop(reason).action;
        self.reason = reason;
        self.new_flow = false;
        self
    }

    #[inline(always)]
    const fn identities(mut self, src: u32, dst: u32) -> Self {
        self.src_identity = src;
        self.dst_identity = dst;
        self
    }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer of a TC program is its `__sk_buff`, valid for the whole run.
    unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).ifindex }
}

/// Counts the verdict, emits its event, returns its action.
#[inline(always)]
fn conclude(ctx: &TcContext, flow: Option<&Flow>, verdict: &Verdict) -> i32 {
    let len = ctx.len();
    count(verdict.reason, len);
    let dropped = reason::is_drop(verdict.reason);
    if verdict.reason == reason::DROPPED_POLICY {
        count_policy(verdict.policy_id, len);
    }
    if dropped || (verdict.new_flow && config().flags & FLAG_EVENTS_FORWARDED != 0) {
        let mut event = VerdictEvent {
            // SAFETY: a helper without arguments.
            timestamp_ns: unsafe { bpf_ktime_get_ns() },
            verdict: if dropped {
                VERDICT_DROPPED
            } else {
                VERDICT_FORWARDED
            },
            direction: verdict.direction,
            reason: verdict.reason,
            policy_id: verdict.policy_id,
            ifindex: ifindex(ctx),
            src_identity: verdict.src_identity,
            dst_identity: verdict.dst_identity,
            len,
            ..VerdictEvent::default()
        };
        if let Some(flow) = flow {
            event.saddr = flow.saddr;
            event.daddr = flow.daddr;
            event.sport = flow.sport;
            event.dport = flow.dport;
            event.protocol = flow.protocol;
        }
        // A full ring loses the event, never the packet.
        let _ = EVENTS.output_untyped(&event, events_wakeup_flags());
    }
    verdict.action
}

/// Applies one direction's decision. `Err` carries the drop verdict.
#[inline(always)]
fn check(
    decision: Decision,
    state: CtState,
    direction: u8,
    verdict: &mut Verdict,
) -> Result<(), ()> {
    match decision {
        Decision::Open => Ok(()),
        Decision::Allow(policy_id) => {
            if verdict.policy_id == 0 {
                verdict.policy_id = policy_id;
            }
            Ok(())
        }
        // Replies of allowed flows pass a default-deny direction; explicit denies still hold.
        Decision::DefaultDeny(_) if state == CtState::Reply => Ok(()),
        Decision::DefaultDeny(policy_id) | Decision::Deny(policy_id) => {
            verdict.direction = direction;
            verdict.policy_id = policy_id;
            Err(())
        }
    }
}

#[inline(always)]
fn parse_or_verdict(ctx: &TcContext) -> Result<Flow, Verdict> {
    match packet::parse(ctx) {
        Ok(Parsed::Ipv4(flow)) => Ok(flow),
        Ok(Parsed::NotIpv4) => Err(Verdict::pass(reason::PASS_NOT_IPV4)),
        Err(ParseError::Malformed) => Err(Verdict::drop(reason::DROPPED_MALFORMED)),
        Err(ParseError::Fragment) => Err(Verdict::drop(reason::DROPPED_FRAGMENT)),
    }
}

#[inline(always)]
fn is_new_flow(flow: &Flow, state: CtState) -> bool {
    state == CtState::New && (flow.protocol != PROTO_TCP || flow.syn)
}

// ---------------------------------------------------------------------------------------------
// hm_from_container: TC ingress of a container's host-side veth (packets leaving the container).

#[classifier]
pub fn hm_from_container(ctx: TcContext) -> i32 {
    let (flow, verdict) = match parse_or_verdict(&ctx) {
        Ok(flow) => (Some(flow), try_from_container(&ctx, &flow)),
        Err(verdict) => (None, verdict),
    };
    conclude(&ctx, flow.as_ref(), &verdict)
}

#[inline(always)]
fn try_from_container(ctx: &TcContext, flow: &Flow) -> Verdict {
    let config = config();
    // The source must be the endpoint bound to this interface.
    let src = match ENDPOINTS.get_ptr(&flow.saddr) {
        // SAFETY: a value pointer the lookup just returned, copied out at once.
        Some(src) => unsafe { *src },
        None => return Verdict::drop(reason::DROPPED_SPOOFED),
    };
    if src.flags & FLAG_LOCAL == 0 || src.ifindex != ifindex(ctx) {
        return Verdict::drop(reason::DROPPED_SPOOFED);
    }
    // SAFETY: as above.
    let dst: Option<Endpoint> = ENDPOINTS.get_ptr(&flow.daddr).map(|p| unsafe { *p });
    let peer = identity_of(flow.daddr, dst.as_ref(), &config);
    let mut verdict = Verdict::pass(reason::PASS_TO_HOST).identities(src.identity, peer);
    let state = ct_lookup(flow);

    let egress = evaluate(
        src.identity,
        peer,
        flow.protocol,
        flow.dport,
        DIRECTION_EGRESS,
    );
    if check(egress, state, DIRECTION_EGRESS, &mut verdict).is_err() {
        return verdict.into_drop(reason::DROPPED_POLICY);
    }

    if let Some(dst) = dst.filter(|d| d.flags & FLAG_LOCAL != 0) {
        let ingress = evaluate(
            dst.identity,
            src.identity,
            flow.protocol,
            flow.dport,
            DIRECTION_INGRESS,
        );
        if check(ingress, state, DIRECTION_INGRESS, &mut verdict).is_err() {
            return verdict.into_drop(reason::DROPPED_POLICY);
        }
        record(flow, state, &mut verdict);
        return deliver_local(ctx, flow, &dst, verdict);
    }

    // A container on another node — a synced remote endpoint, or else any address in a node
    // subnet of `HM_TUNNELS` (its identity resolves on the receiving node) — goes through the
    // overlay. Never to this node itself: a stale entry naming it takes the host path.
    let node_ip = node_of(flow.daddr, dst.as_ref());
    if node_ip != 0 && node_ip != config.node_ip {
        return send_overlay(ctx, flow, &src, node_ip, &config, state, verdict);
    }

    record(flow, state, &mut verdict);
    // A reply of a published-port flow: give it the node's address and published port back.
    if let Some(nat) = NAT.get_ptr(&forward_key(flow)) {
        // SAFETY: a value pointer the lookup just returned, copied out at once.
        let nat = unsafe { *nat };
        if packet::rewrite_src(ctx, flow, nat.orig_ip, nat.orig_port).is_err() {
            return verdict.into_drop(reason::DROPPED_INTERNAL);
        }
        return match redirect_out(ctx, flow, nat.orig_ip) {
            Some(action) => Verdict {
                action,
                reason: reason::FORWARDED_PORT_MAP,
                ..verdict
            },
            None => verdict.into_drop(reason::DROPPED_INTERNAL),
        };
    }
    verdict
}

/// Remembers an allowed new flow and marks it for a forwarded event.
#[inline(always)]
fn record(flow: &Flow, state: CtState, verdict: &mut Verdict) {
    if state == CtState::New {
        ct_create(flow);
    }
    verdict.new_flow = is_new_flow(flow, state);
}

/// Hands the packet straight to the destination container's `eth0`, as the router it thinks
/// its gateway is would: TTL down, MACs of the last hop.
#[inline(always)]
fn deliver_local(ctx: &TcContext, flow: &Flow, dst: &Endpoint, verdict: Verdict) -> Verdict {
    if flow.ttl <= 1 {
        // Let the host stack answer with ICMP time exceeded.
        return verdict;
    }
    if packet::decrement_ttl(ctx, flow).is_err() {
        return verdict.into_drop(reason::DROPPED_INTERNAL);
    }
    into_container(ctx, dst, verdict, reason::FORWARDED_LOCAL)
}

/// Writes the container's MACs and redirects into its `eth0`.
#[inline(always)]
fn into_container(ctx: &TcContext, dst: &Endpoint, verdict: Verdict, done: u32) -> Verdict {
    if packet::set_macs(ctx, &dst.mac, &dst.gw_mac).is_err() {
        return verdict.into_drop(reason::DROPPED_INTERNAL);
    }
    // SAFETY: helper with plain integer arguments.
    let mut action = unsafe { bpf_redirect_peer(dst.ifindex, 0) };
    if action != i64::from(TC_ACT_REDIRECT) {
        // No peer redirect here: go through the host veth's egress instead.
        // SAFETY: helper with plain integer arguments.
        action = unsafe { bpf_redirect(dst.ifindex, 0) };
    }
    if action != i64::from(TC_ACT_REDIRECT) {
        return verdict.into_drop(reason::DROPPED_INTERNAL);
    }
    Verdict {
        action: TC_ACT_REDIRECT,
        reason: done,
        ..verdict
    }
}

/// The underlay address of the node hosting `addr` (wire order), whose endpoint is `dst`: a
/// remote endpoint's node, else the node whose subnet holds it in `HM_TUNNELS`; 0 if none.
#[inline(always)]
fn node_of(addr: u32, dst: Option<&Endpoint>) -> u32 {
    match dst {
        Some(dst) if dst.flags & FLAG_REMOTE != 0 => dst.node_ip,
        _ => tunnel_of(addr),
    }
}

/// The node whose container subnet holds `addr` (wire order), 0 if none.
#[inline(always)]
fn tunnel_of(addr: u32) -> u32 {
    TUNNELS
        .get(&Key::new(32, addr.to_ne_bytes()))
        .copied()
        .unwrap_or(0)
}

/// Sends the packet to node `node_ip` through the overlay: TTL down (the cluster network is
/// one routed hop), VXLAN headers with the source's identity as VNI, out of the underlay.
#[inline(always)]
fn send_overlay(
    ctx: &TcContext,
    flow: &Flow,
    src: &Endpoint,
    node_ip: u32,
    config: &Config,
    state: CtState,
    mut verdict: Verdict,
) -> Verdict {
    if flow.ttl <= 1 {
        // Let the host stack answer with ICMP time exceeded.
        return verdict;
    }
    // SAFETY: a value pointer the lookup just returned, copied out at once.
    let Some(peer) = PEERS.get_ptr(&node_ip).map(|p| unsafe { *p }) else {
        // Not a member (yet): it would drop what we send anyway.
        return verdict.into_drop(reason::DROPPED_NO_ROUTE);
    };
    if config.node_ip == 0 {
        // No underlay address to send from.
        return verdict.into_drop(reason::DROPPED_NO_ROUTE);
    }
    if packet::decrement_ttl(ctx, flow).is_err() {
        return verdict.into_drop(reason::DROPPED_INTERNAL);
    }
    match overlay::send(
        ctx,
        config.node_ip,
        node_ip,
        &peer,
        src.identity,
        &src.mac,
        vxlan_port(config),
    ) {
        Ok(action) => {
            record(flow, state, &mut verdict);
            count_peer(node_ip, ctx.len(), false);
            Verdict {
                action,
                reason: reason::FORWARDED_OVERLAY,
                ..verdict
            }
        }
        Err(why) => verdict.into_drop(why),
    }
}

/// Sends a reverse-NATed reply out of the interface the node routes its destination through;
/// `None` when a rewrite or the redirect failed.
/// Its source is now a node address, which the host stack would refuse as a martian on a
/// container veth; so it skips the stack. Falls back to the stack if the FIB has no answer.
#[inline(always)]
fn redirect_out(ctx: &TcContext, flow: &Flow, new_saddr: u32) -> Option<i32> {
    // SAFETY: an all-zero `bpf_fib_lookup` is a valid value (plain integers and unions of them).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = flow.protocol;
    params.ifindex = ifindex(ctx);
    // No `tot_len`: given one, the helper compares it with the route's MTU and answers
    // FRAG_NEEDED for every GSO super-packet; without it, it checks the skb itself, GSO-aware.
    params.__bindgen_anon_3.ipv4_src = new_saddr;
    params.__bindgen_anon_4.ipv4_dst = flow.daddr;
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    // SAFETY: `params` lives on this stack frame for the whole call; the size is its own.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &raw mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        if {
            // SAFETY: on success the kernel filled in the MAC half of the union.
            let macs = unsafe { params.__bindgen_anon_6.__bindgen_anon_2 };
            packet::set_macs(ctx, &macs.dmac, &macs.smac)
        }
        .is_err()
        {
            return None;
        }
        // SAFETY: helper with plain integer arguments.
        let action = unsafe { bpf_redirect(params.ifindex, 0) };
        return (action == i64::from(TC_ACT_REDIRECT)).then_some(TC_ACT_REDIRECT);
    }
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        // SAFETY: a NULL neighbour means "resolve the next hop from the route".
        let action = unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) };
        return (action == i64::from(TC_ACT_REDIRECT)).then_some(TC_ACT_REDIRECT);
    }
    // No route known to the FIB helper: let the host stack try.
    Some(TC_ACT_OK)
}

// ---------------------------------------------------------------------------------------------
// hm_to_container: TC egress of a container's host-side veth (packets the host stack routes
// into the container).

#[classifier]
pub fn hm_to_container(ctx: TcContext) -> i32 {
    let (flow, verdict) = match parse_or_verdict(&ctx) {
        Ok(flow) => (Some(flow), try_to_container(&flow)),
        Err(verdict) => (None, verdict),
    };
    conclude(&ctx, flow.as_ref(), &verdict)
}

#[inline(always)]
fn try_to_container(flow: &Flow) -> Verdict {
    let config = config();
    // SAFETY: a value pointer the lookup just returned, copied out at once.
    let dst: Option<Endpoint> = ENDPOINTS.get_ptr(&flow.daddr).map(|p| unsafe { *p });
    let Some(dst) = dst.filter(|d| d.flags & FLAG_LOCAL != 0) else {
        // Not addressed to a known container (broadcast and the like): nothing to enforce.
        return Verdict::pass(reason::PASS_TO_CONTAINER);
    };
    // SAFETY: as above.
    let src: Option<Endpoint> = ENDPOINTS.get_ptr(&flow.saddr).map(|p| unsafe { *p });
    let peer = identity_of(flow.saddr, src.as_ref(), &config);
    let mut verdict = Verdict::pass(reason::PASS_TO_CONTAINER).identities(peer, dst.identity);
    let state = ct_lookup(flow);
    let ingress = evaluate(
        dst.identity,
        peer,
        flow.protocol,
        flow.dport,
        DIRECTION_INGRESS,
    );
    if check(ingress, state, DIRECTION_INGRESS, &mut verdict).is_err() {
        return verdict.into_drop(reason::DROPPED_POLICY);
    }
    record(flow, state, &mut verdict);
    verdict
}

// ---------------------------------------------------------------------------------------------
// hm_node_ingress: TC ingress of the node's uplink. Published ports (DNAT); all else untouched.

#[classifier]
pub fn hm_node_ingress(ctx: TcContext) -> i32 {
    let (flow, verdict) = match packet::parse(&ctx) {
        Ok(Parsed::Ipv4(flow)) => {
            let config = config();
            if is_overlay(&flow, &config) {
                let (flow, verdict) = receive_overlay(&ctx, &flow);
                (Some(flow), verdict)
            } else {
                (Some(flow), try_node_ingress(&ctx, &flow, &config))
            }
        }
        Ok(Parsed::NotIpv4) => (None, Verdict::pass(reason::PASS_NOT_IPV4)),
        // Not ours to judge: the host stack deals with what it receives.
        Err(_) => (None, Verdict::pass(reason::PASS_TO_HOST)),
    };
    conclude(&ctx, flow.as_ref(), &verdict)
}

/// UDP to the VXLAN port of this node's address.
#[inline(always)]
fn is_overlay(flow: &Flow, config: &Config) -> bool {
    flow.protocol == PROTO_UDP
        && flow.dport == vxlan_port(config)
        && (config.node_ip == 0 || flow.daddr == config.node_ip)
}

/// VXLAN from the underlay: only from members; strip the outer headers, then the destination
/// container's ingress policy with the source identity the VNI carries, and straight into the
/// container. Returns the flow the verdict is about (the inner one once it is known).
#[inline(always)]
fn receive_overlay(ctx: &TcContext, outer: &Flow) -> (Flow, Verdict) {
    if PEERS.get_ptr(&outer.saddr).is_none() {
        return (*outer, Verdict::drop(reason::DROPPED_NOT_MEMBER));
    }
    let len = ctx.len();
    let vni = match overlay::strip(ctx, outer) {
        Ok(vni) => vni,
        Err(why) => return (*outer, Verdict::drop(why)),
    };
    count_peer(outer.saddr, len, true);
    let inner = match packet::parse(ctx) {
        Ok(Parsed::Ipv4(inner)) => inner,
        Ok(Parsed::NotIpv4) | Err(ParseError::Malformed) => {
            return (*outer, Verdict::drop(reason::DROPPED_MALFORMED));
        }
        Err(ParseError::Fragment) => return (*outer, Verdict::drop(reason::DROPPED_FRAGMENT)),
    };
    // VNI 0 (a foreign VTEP's default) says nothing about the source: WORLD.
    let src_identity = if vni == 0 { identity::WORLD } else { vni };
    (inner, deliver_from_overlay(ctx, &inner, src_identity))
}

#[inline(always)]
fn deliver_from_overlay(ctx: &TcContext, flow: &Flow, src_identity: u32) -> Verdict {
    // SAFETY: a value pointer the lookup just returned, copied out at once.
    let dst: Option<Endpoint> = ENDPOINTS.get_ptr(&flow.daddr).map(|p| unsafe { *p });
    let Some(dst) = dst.filter(|d| d.flags & FLAG_LOCAL != 0) else {
        let config = config();
        if flow.daddr == config.gateway_ip && config.host_ifindex != 0 {
            // A container's answer to this node's own traffic (`hm_from_host`).
            return into_host(ctx, &config, src_identity);
        }
        // The sender thinks the container lives here; it does not (any more).
        return Verdict::drop(reason::DROPPED_NO_ROUTE).identities(src_identity, 0);
    };
    let mut verdict =
        Verdict::pass(reason::RECEIVED_OVERLAY).identities(src_identity, dst.identity);
    let state = ct_lookup(flow);
    let ingress = evaluate(
        dst.identity,
        src_identity,
        flow.protocol,
        flow.dport,
        DIRECTION_INGRESS,
    );
    if check(ingress, state, DIRECTION_INGRESS, &mut verdict).is_err() {
        return verdict.into_drop(reason::DROPPED_POLICY);
    }
    // Recorded here too, so the container's replies pass its egress default-deny.
    record(flow, state, &mut verdict);
    into_container(ctx, &dst, verdict, reason::RECEIVED_OVERLAY)
}

/// Hands a packet from the overlay to the node's stack as if `hivemind0`, which holds the
/// gateway address, had received it: reverse-path filtering then finds the cluster route it
/// expects (the uplink would fail a strict check), and the node's firewall sees the device.
#[inline(always)]
fn into_host(ctx: &TcContext, config: &Config, src_identity: u32) -> Verdict {
    let verdict = Verdict::pass(reason::RECEIVED_OVERLAY).identities(src_identity, identity::HOST);
    if packet::set_macs(ctx, &config.host_mac, &config.host_mac).is_err() {
        return verdict.into_drop(reason::DROPPED_INTERNAL);
    }
    // SAFETY: helper with plain integer arguments.
    let action = unsafe { bpf_redirect(config.host_ifindex, u64::from(BPF_F_INGRESS)) };
    if action != i64::from(TC_ACT_REDIRECT) {
        return verdict.into_drop(reason::DROPPED_INTERNAL);
    }
    Verdict {
        action: TC_ACT_REDIRECT,
        ..verdict
    }
}

#[inline(always)]
fn try_node_ingress(ctx: &TcContext, flow: &Flow, config: &Config) -> Verdict {
    let untouched = Verdict::pass(reason::PASS_TO_HOST);
    if flow.protocol != PROTO_TCP && flow.protocol != PROTO_UDP {
        return untouched;
    }
    if config.node_ip != 0 && flow.daddr != config.node_ip {
        return untouched;
    }
    let key = PortKey {
        port: flow.dport,
        protocol: flow.protocol,
        _pad: 0,
    };
    let Some(target) = PORTS.get_ptr(&key) else {
        return untouched;
    };
    // SAFETY: a value pointer the lookup just returned, copied out at once.
    let target = unsafe { *target };
    // The reply as the container will send it.
    let reply = CtKey {
        saddr: target.ip,
        daddr: flow.saddr,
        sport: target.port,
        dport: flow.sport,
        protocol: flow.protocol,
        _pad: [0; 3],
    };
    if NAT.get_ptr(&reply).is_none() {
        let value = hivemind_common::ct::NatValue {
            orig_ip: flow.daddr,
            orig_port: flow.dport,
            _pad: 0,
        };
        let _ = NAT.insert(&reply, &value, 0);
    }
    if packet::rewrite_dst(ctx, flow, target.ip, target.port).is_err() {
        return Verdict::drop(reason::DROPPED_INTERNAL);
    }
    let src_identity = identity_of(flow.saddr, None, config);
    let mut verdict = Verdict::pass(reason::FORWARDED_PORT_MAP).identities(src_identity, 0);
    verdict.new_flow = flow.protocol != PROTO_TCP || flow.syn;
    verdict
}

// ---------------------------------------------------------------------------------------------
// hm_from_host: TC egress of `hivemind0`. The node routes the cluster CIDR there (source: the
// gateway address), so its own connections to containers on other nodes — the HTTP router's,
// an operator's `curl` — go through the overlay like a container's.

#[classifier]
pub fn hm_from_host(ctx: TcContext) -> i32 {
    let (flow, verdict) = match parse_or_verdict(&ctx) {
        Ok(flow) => (Some(flow), try_from_host(&ctx, &flow)),
        Err(verdict) => (None, verdict),
    };
    conclude(&ctx, flow.as_ref(), &verdict)
}

#[inline(always)]
fn try_from_host(ctx: &TcContext, flow: &Flow) -> Verdict {
    let config = config();
    // SAFETY: a value pointer the lookup just returned, copied out at once.
    let dst: Option<Endpoint> = ENDPOINTS.get_ptr(&flow.daddr).map(|p| unsafe { *p });
    let dst_identity = identity_of(flow.daddr, dst.as_ref(), &config);
    let verdict = Verdict::drop(reason::DROPPED_NO_ROUTE).identities(identity::HOST, dst_identity);
    // Only the node's own packets: answers come back to the gateway address, and traffic the
    // node merely forwards (from outside, towards the cluster CIDR) is not the node's to
    // carry into the overlay under its identity.
    if flow.saddr != config.gateway_ip || config.node_ip == 0 {
        return verdict;
    }
    let node_ip = node_of(flow.daddr, dst.as_ref());
    if node_ip == 0 || node_ip == config.node_ip {
        return verdict;
    }
    // SAFETY: a value pointer the lookup just returned, copied out at once.
    let Some(peer) = PEERS.get_ptr(&node_ip).map(|p| unsafe { *p }) else {
        return verdict;
    };
    match overlay::send(
        ctx,
        config.node_ip,
        node_ip,
        &peer,
        identity::HOST,
        &config.host_mac,
        vxlan_port(&config),
    ) {
        Ok(action) => {
            count_peer(node_ip, ctx.len(), false);
            let mut verdict = Verdict {
                action,
                reason: reason::FORWARDED_OVERLAY,
                ..verdict
            };
            record(flow, ct_lookup(flow), &mut verdict);
            verdict
        }
        Err(why) => verdict.into_drop(why),
    }
}

// ---------------------------------------------------------------------------------------------
// hm_underlay: XDP on the underlay. VXLAN (UDP to the VXLAN port) from a source that is not a
// cluster member is dropped before the stack allocates anything for it; everything else passes
// untouched (and uncounted: the TC program behind it decides and counts).

const XDP_IPV4_MIN: usize = ETH_HLEN + 20;

#[xdp]
pub fn hm_underlay(ctx: XdpContext) -> u32 {
    match not_member(&ctx) {
        Some(event) => {
            count(reason::DROPPED_NOT_MEMBER, event.len);
            // A full ring loses the event, never the verdict.
            let _ = EVENTS.output_untyped(&event, 0);
            xdp_action::XDP_DROP
        }
        None => xdp_action::XDP_PASS,
    }
}

/// The drop event for a VXLAN packet from a non-member, `None` for anything else (including
/// what is too short to tell: the stack and the TC program deal with it).
#[inline(always)]
fn not_member(ctx: &XdpContext) -> Option<VerdictEvent> {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + XDP_IPV4_MIN > end {
        return None;
    }
    let eth = data as *const u8;
    // SAFETY: the first XDP_IPV4_MIN bytes are inside the packet (checked above).
    let (ethertype, ver_ihl, frag, protocol) = unsafe {
        (
            [*eth.add(12), *eth.add(13)],
            *eth.add(ETH_HLEN),
            [*eth.add(ETH_HLEN + 6), *eth.add(ETH_HLEN + 7)],
            *eth.add(ETH_HLEN + 9),
        )
    };
    if ethertype != [0x08, 0x00] || ver_ihl >> 4 != 4 || protocol != PROTO_UDP {
        return None;
    }
    // Later fragments carry no UDP header.
    if u16::from_be_bytes(frag) & 0x1fff != 0 {
        return None;
    }
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let udp = data + ETH_HLEN + ihl;
    if udp + 8 > end {
        return None;
    }
    let udp = udp as *const u8;
    // SAFETY: the 8 bytes of the UDP header are inside the packet (checked above); the
    // addresses sit in the IPv4 header checked before, read unaligned.
    let (sport, dport, saddr, daddr) = unsafe {
        (
            u16::from_be_bytes([*udp, *udp.add(1)]),
            u16::from_be_bytes([*udp.add(2), *udp.add(3)]),
            eth.add(ETH_HLEN + 12).cast::<u32>().read_unaligned(),
            eth.add(ETH_HLEN + 16).cast::<u32>().read_unaligned(),
        )
    };
    if dport != vxlan_port(&config()) || PEERS.get_ptr(&saddr).is_some() {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)] // an XDP frame is at most a few pages
    let len = (end - data) as u32;
    #[allow(clippy::cast_possible_truncation)]
    let ifindex = ctx.ingress_ifindex() as u32;
    Some(VerdictEvent {
        // SAFETY: a helper without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        saddr,
        daddr,
        sport,
        dport,
        protocol: PROTO_UDP,
        verdict: VERDICT_DROPPED,
        direction: DIRECTION_INGRESS,
        reason: reason::DROPPED_NOT_MEMBER,
        ifindex,
        len,
        ..VerdictEvent::default()
    })
}
