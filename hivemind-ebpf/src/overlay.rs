//! The VXLAN overlay (wire format in `hivemind_common::overlay`): pushing the outer headers on
//! the sending node and stripping them on the receiving one, both with `bpf_skb_adjust_room`,
//! which keeps GSO super-packets whole (the kernel segments them, if it must, as UDP-tunnel
//! GSO with the inner headers it was told about).

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, bpf_adj_room_mode,
        bpf_fib_lookup,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_hash_recalc, bpf_redirect, bpf_redirect_neigh,
    },
    programs::TcContext,
};
use hivemind_common::{
    config::Config,
    overlay::{
        DEFAULT_VXLAN_PORT, OVERHEAD, Peer, SPORT_BASE, SPORT_MASK, VNI_MASK, VXLAN_FLAG_VNI,
    },
    reason,
};

use crate::packet::{self, ETH_HLEN, Flow, PROTO_UDP};

const AF_INET: u8 = 2;
const UDP_HLEN: usize = 8;
const VXLAN_HLEN: usize = 8;
/// What follows the outer IPv4 header: UDP, VXLAN, inner Ethernet.
const AFTER_OUTER_IP: usize = UDP_HLEN + VXLAN_HLEN + ETH_HLEN;
const OUTER_IP_HLEN: usize = 20;
const HEADERS: usize = OUTER_IP_HLEN + AFTER_OUTER_IP;
const _: () = assert!(HEADERS == OVERHEAD as usize);
/// Don't fragment: the overlay is never fragmented (containers get the MTU that fits).
const IP_DF: u8 = 0x40;
const OUTER_TTL: u8 = 64;
const INNER_MIN: usize = 20;

/// The VXLAN port the agent configured.
#[inline(always)]
pub fn vxlan_port(config: &Config) -> u16 {
    if config.vxlan_port == 0 {
        DEFAULT_VXLAN_PORT
    } else {
        config.vxlan_port
    }
}

/// The Internet checksum of an IPv4 header (checksum field zero).
#[inline(always)]
fn ipv4_checksum(header: &[u8; HEADERS]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < OUTER_IP_HLEN {
        sum += u32::from(u16::from_be_bytes([header[i], header[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[allow(clippy::cast_possible_truncation)] // folded into 16 bits above
    let folded = sum as u16;
    !folded
}

/// Wraps the packet (a container's Ethernet frame) for `peer_ip` and sends it out of the
/// interface the FIB names for it. Returns the action, or the reason it could not be sent.
#[inline(always)]
pub fn send(
    ctx: &TcContext,
    local_ip: u32,
    peer_ip: u32,
    peer: &Peer,
    vni: u32,
    inner_src_mac: &[u8; 6],
    port: u16,
) -> Result<i32, u32> {
    // The inner flow's hash (the socket's, or the flow dissector's), for ECMP on the underlay.
    // SAFETY: the program's own context.
    let hash = unsafe { bpf_get_hash_recalc(ctx.as_ptr().cast()) };
    #[allow(clippy::cast_possible_truncation)] // the 14 low bits are kept
    let sport = SPORT_BASE | ((hash ^ (hash >> 16)) as u16 & SPORT_MASK);
    let inner_len = ctx.len() as usize - ETH_HLEN;
    let Ok(tot_len) = u16::try_from(inner_len + HEADERS) else {
        return Err(reason::DROPPED_TOO_BIG);
    };
    #[allow(clippy::cast_possible_truncation)] // < tot_len
    let udp_len = (inner_len + AFTER_OUTER_IP) as u16;

    // Room for the outer IPv4/UDP/VXLAN headers and the inner Ethernet header, right after the
    // Ethernet header (which becomes the outer one). FIXED_GSO: the container's MTU already
    // leaves room for the 50 bytes, so GSO segments keep their size.
    let flags = u64::from(
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
            | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
            | BPF_F_ADJ_ROOM_ENCAP_L2_ETH
            | BPF_F_ADJ_ROOM_FIXED_GSO,
    ) | ((ETH_HLEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // 50
    let grow = HEADERS as i32;
    if ctx
        .adjust_room(grow, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return Err(reason::DROPPED_INTERNAL);
    }

    let mut hdr = [0u8; HEADERS];
    // Outer IPv4.
    hdr[0] = 0x45;
    let [hi, lo] = tot_len.to_be_bytes();
    hdr[2] = hi;
    hdr[3] = lo;
    hdr[6] = IP_DF;
    hdr[8] = OUTER_TTL;
    hdr[9] = PROTO_UDP;
    let src = local_ip.to_ne_bytes();
    let dst = peer_ip.to_ne_bytes();
    hdr[12] = src[0];
    hdr[13] = src[1];
    hdr[14] = src[2];
    hdr[15] = src[3];
    hdr[16] = dst[0];
    hdr[17] = dst[1];
    hdr[18] = dst[2];
    hdr[19] = dst[3];
    let [hi, lo] = ipv4_checksum(&hdr).to_be_bytes();
    hdr[10] = hi;
    hdr[11] = lo;
    // UDP; checksum 0 (none), as RFC 7348 allows over IPv4 and Linux sends by default.
    let udp = OUTER_IP_HLEN;
    let [hi, lo] = sport.to_be_bytes();
    hdr[udp] = hi;
    hdr[udp + 1] = lo;
    let [hi, lo] = port.to_be_bytes();
    hdr[udp + 2] = hi;
    hdr[udp + 3] = lo;
    let [hi, lo] = udp_len.to_be_bytes();
    hdr[udp + 4] = hi;
    hdr[udp + 5] = lo;
    // VXLAN: the I flag and the 24-bit VNI (the source's identity).
    let vx = udp + UDP_HLEN;
    hdr[vx] = VXLAN_FLAG_VNI;
    let vni = (vni & VNI_MASK).to_be_bytes();
    hdr[vx + 4] = vni[1];
    hdr[vx + 5] = vni[2];
    hdr[vx + 6] = vni[3];
    // Inner Ethernet.
    let eth = vx + VXLAN_HLEN;
    let mut i = 0;
    while i < 6 {
        hdr[eth + i] = peer.vtep_mac[i];
        hdr[eth + 6 + i] = inner_src_mac[i];
        i += 1;
    }
    hdr[eth + 12] = 0x08;
    hdr[eth + 13] = 0x00;
    if ctx.store(ETH_HLEN, &hdr, 0).is_err() {
        return Err(reason::DROPPED_INTERNAL);
    }
    redirect_to(ctx, local_ip, peer_ip)
}

/// Outer MACs and interface from the FIB, then out. Made after the headers are pushed: without
/// a `tot_len`, the helper checks the skb against the route's MTU itself, GSO-aware.
#[inline(always)]
fn redirect_to(ctx: &TcContext, local_ip: u32, peer_ip: u32) -> Result<i32, u32> {
    // SAFETY: an all-zero `bpf_fib_lookup` is a valid value (plain integers and unions of them).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = PROTO_UDP;
    // SAFETY: the context pointer of a TC program is its `__sk_buff`.
    params.ifindex = unsafe { (*ctx.as_ptr().cast::<aya_ebpf::bindings::__sk_buff>()).ifindex };
    params.__bindgen_anon_3.ipv4_src = local_ip;
    params.__bindgen_anon_4.ipv4_dst = peer_ip;
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
    let action = if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        // SAFETY: on success the kernel filled in the MAC half of the union.
        let macs = unsafe { params.__bindgen_anon_6.__bindgen_anon_2 };
        if packet::set_macs(ctx, &macs.dmac, &macs.smac).is_err() {
            return Err(reason::DROPPED_INTERNAL);
        }
        // SAFETY: helper with plain integer arguments.
        unsafe { bpf_redirect(params.ifindex, 0) }
    } else if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        // SAFETY: a NULL neighbour means "resolve the next hop from the route".
        unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) }
    } else if rc == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        return Err(reason::DROPPED_TOO_BIG);
    } else {
        return Err(reason::DROPPED_NO_ROUTE);
    };
    if action == i64::from(TC_ACT_REDIRECT) {
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(reason::DROPPED_INTERNAL)
    }
}

/// Checks the VXLAN header behind `outer` (UDP to our port from a member) and strips
/// everything up to the inner IPv4 header, keeping the outer Ethernet header in front of it.
/// Returns the VNI, or the reason to drop.
#[inline(always)]
pub fn strip(ctx: &TcContext, outer: &Flow) -> Result<u32, u32> {
    if outer.l4_off + AFTER_OUTER_IP + INNER_MIN > outer.ip_end {
        return Err(reason::DROPPED_MALFORMED);
    }
    let vxlan: [u8; VXLAN_HLEN + ETH_HLEN] = ctx
        .load(outer.l4_off + UDP_HLEN)
        .map_err(|_| reason::DROPPED_MALFORMED)?;
    // The I flag must be set; the reserved bits are ignored (RFC 7348, section 5).
    if vxlan[0] & VXLAN_FLAG_VNI == 0 {
        return Err(reason::DROPPED_MALFORMED);
    }
    // The overlay carries IPv4 only.
    if vxlan[VXLAN_HLEN + 12] != 0x08 || vxlan[VXLAN_HLEN + 13] != 0x00 {
        return Err(reason::DROPPED_MALFORMED);
    }
    let vni = u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]);
    let strip = outer.l4_off - ETH_HLEN + AFTER_OUTER_IP;
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // at most 60 + 30
    let diff = -(strip as i32);
    // FIXED_GSO: a GSO packet's segments are the inner packet's (the sender kept the
    // container's MSS); without it the kernel would grow the segment size by the 50 bytes
    // stripped, and the receiving TCP would take segments for larger than they are.
    if ctx
        .adjust_room(
            diff,
            bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
            u64::from(BPF_F_ADJ_ROOM_FIXED_GSO),
        )
        .is_err()
    {
        return Err(reason::DROPPED_INTERNAL);
    }
    Ok(vni)
}
