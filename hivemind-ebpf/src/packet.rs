//! Header parsing and rewriting. Reads go through `bpf_skb_load_bytes` (bounds-checked by the
//! kernel against the whole packet, linear or not); writes through `bpf_skb_store_bytes` and the
//! checksum helpers, so GSO packets and checksum offload stay correct.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// Offset of the IPv4 header (no VLAN tags: container veths and the uplink carry none).
pub const IP_OFF: usize = ETH_HLEN;
const IP_CSUM_OFF: usize = IP_OFF + 10;
const IP_TTL_OFF: usize = IP_OFF + 8;
const IP_SADDR_OFF: usize = IP_OFF + 12;
const IP_DADDR_OFF: usize = IP_OFF + 16;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_HLEN: usize = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

const IP_OFFSET_MASK: u16 = 0x1fff;

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    saddr: u32,
    daddr: u32,
}

/// What the programs need to know about an IPv4 packet.
#[derive(Clone, Copy)]
pub struct Flow {
    /// Wire byte order.
    pub saddr: u32,
    pub daddr: u32,
    /// Host order. ICMP echo: `sport` = echo id, `dport` = 0; other ICMP: both 0.
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub ttl: u8,
    /// TCP SYN without ACK: the first packet of a connection.
    pub syn: bool,
    /// Offset of the L4 header (after IP options).
    pub l4_off: usize,
    /// Offset of the end of the IP packet (what follows is Ethernet padding).
    pub ip_end: usize,
}

impl Flow {
    /// Offset of the L4 checksum this program may have to fix, if the protocol has one that
    /// covers the IP addresses.
    #[inline(always)]
    fn l4_csum_off(&self) -> Option<(usize, u64)> {
        match self.protocol {
            PROTO_TCP => Some((self.l4_off + 16, 0)),
            // A UDP checksum of 0 means "none"; keep it that way.
            PROTO_UDP => Some((self.l4_off + 6, u64::from(BPF_F_MARK_MANGLED_0))),
            _ => None,
        }
    }
}

pub enum Parsed {
    NotIpv4,
    Ipv4(Flow),
}

/// Why a packet could not be parsed.
pub enum ParseError {
    /// Truncated or inconsistent headers.
    Malformed,
    /// A non-first IP fragment: no L4 header to decide on.
    Fragment,
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, ParseError> {
    let len = ctx.len() as usize;
    let ethertype: [u8; 2] = ctx.load(12).map_err(|_| ParseError::Malformed)?;
    if u16::from_be_bytes(ethertype) != ETH_P_IP {
        return Ok(Parsed::NotIpv4);
    }
    let ip: Ipv4Hdr = ctx.load(IP_OFF).map_err(|_| ParseError::Malformed)?;
    if ip.ver_ihl >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let ihl = usize::from(ip.ver_ihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(ParseError::Malformed);
    }
    // tot_len 0 is BIG TCP (a GSO packet over 64 KiB): the skb length is the truth then.
    let tot_len = match usize::from(u16::from_be_bytes(ip.tot_len)) {
        0 => len - IP_OFF,
        n => n,
    };
    if tot_len < ihl || IP_OFF + tot_len > len {
        return Err(ParseError::Malformed);
    }
    // Later fragments carry no L4 header to decide on. A first fragment (MF set, offset 0)
    // does, and is judged on it like any packet.
    let frag = u16::from_be_bytes(ip.frag_off);
    if frag & IP_OFFSET_MASK != 0 {
        return Err(ParseError::Fragment);
    }
    let ip_end = IP_OFF + tot_len;
    let l4_off = IP_OFF + ihl;
    let mut flow = Flow {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: 0,
        dport: 0,
        protocol: ip.protocol,
        ttl: ip.ttl,
        syn: false,
        l4_off,
        ip_end,
    };
    match ip.protocol {
        PROTO_TCP => {
            if l4_off + TCP_HLEN > ip_end {
                return Err(ParseError::Malformed);
            }
            let tcp: [u8; 14] = ctx.load(l4_off).map_err(|_| ParseError::Malformed)?;
            flow.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            flow.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            flow.syn = tcp[13] & (TCP_SYN | TCP_ACK) == TCP_SYN;
        }
        PROTO_UDP => {
            if l4_off + UDP_HLEN > ip_end {
                return Err(ParseError::Malformed);
            }
            let udp: [u8; 4] = ctx.load(l4_off).map_err(|_| ParseError::Malformed)?;
            flow.sport = u16::from_be_bytes([udp[0], udp[1]]);
            flow.dport = u16::from_be_bytes([udp[2], udp[3]]);
        }
        PROTO_ICMP => {
            if l4_off + ICMP_HLEN > ip_end {
                return Err(ParseError::Malformed);
            }
            let icmp: [u8; 6] = ctx.load(l4_off).map_err(|_| ParseError::Malformed)?;
            if icmp[0] == ICMP_ECHO_REQUEST || icmp[0] == ICMP_ECHO_REPLY {
                flow.sport = u16::from_be_bytes([icmp[4], icmp[5]]);
            }
        }
        _ => {}
    }
    Ok(Parsed::Ipv4(flow))
}

/// Rewrites the destination address and port (DNAT), fixing the IP and L4 checksums.
#[inline(always)]
pub fn rewrite_dst(ctx: &TcContext, flow: &Flow, addr: u32, port: u16) -> Result<(), i64> {
    rewrite(
        ctx,
        flow,
        IP_DADDR_OFF,
        flow.daddr,
        addr,
        2,
        flow.dport,
        port,
    )
}

/// Rewrites the source address and port (reverse NAT), fixing the IP and L4 checksums.
#[inline(always)]
pub fn rewrite_src(ctx: &TcContext, flow: &Flow, addr: u32, port: u16) -> Result<(), i64> {
    rewrite(
        ctx,
        flow,
        IP_SADDR_OFF,
        flow.saddr,
        addr,
        0,
        flow.sport,
        port,
    )
}

/// `addr_off`: where the address lives; `port_rel`: the port's offset inside the L4 header.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_rel: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), i64> {
    let (old_port, new_port) = (old_port.to_be(), new_port.to_be());
    if let Some((csum_off, extra)) = flow.l4_csum_off() {
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_addr),
            u64::from(new_addr),
            u64::from(BPF_F_PSEUDO_HDR) | extra | 4,
        )?;
        if old_port != new_port {
            ctx.l4_csum_replace(
                csum_off,
                u64::from(old_port),
                u64::from(new_port),
                extra | 2,
            )?;
        }
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_addr), u64::from(new_addr), 4)?;
    ctx.store(addr_off, &new_addr, 0)?;
    if old_port != new_port {
        ctx.store(flow.l4_off + port_rel, &new_port, 0)?;
    }
    Ok(())
}

/// Decrements the TTL as a router would, fixing the IP checksum.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, flow: &Flow) -> Result<(), i64> {
    // The checksum covers TTL and protocol as one 16-bit word.
    let old = u16::from_be_bytes([flow.ttl, flow.protocol]).to_be();
    let new = u16::from_be_bytes([flow.ttl - 1, flow.protocol]).to_be();
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 2)?;
    ctx.store(IP_TTL_OFF, &(flow.ttl - 1), 0)
}

/// Writes destination and source MAC addresses.
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), i64> {
    ctx.store(0, dst, 0)?;
    ctx.store(6, src, 0)
}
