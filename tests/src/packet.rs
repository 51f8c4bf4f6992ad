//! Crafted Ethernet/IPv4 packets for `BPF_PROG_TEST_RUN`, and readers/checkers for what the
//! programs leave behind.

use std::net::Ipv4Addr;

pub const ETH_HLEN: usize = 14;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const ECHO_REQUEST: u8 = 8;
pub const ECHO_REPLY: u8 = 0;

/// An IPv4 packet under construction; [`Packet::build`] fills in lengths and checksums.
#[derive(Clone, Debug)]
pub struct Packet {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub protocol: u8,
    /// IP options (a multiple of 4 bytes).
    pub options: Vec<u8>,
    /// Flags and fragment offset field, host order (`0x2000` = MF).
    pub frag: u16,
    /// The L4 header and payload; checksums inside are computed by `build`.
    pub l4: Vec<u8>,
}

impl Packet {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: Vec<u8>) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0xfe],
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            src,
            dst,
            ttl: 64,
            protocol,
            options: Vec::new(),
            frag: 0,
            l4,
        }
    }

    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Self {
        let mut l4 = vec![0u8; 20];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[4..8].copy_from_slice(&1u32.to_be_bytes());
        l4[12] = 5 << 4;
        l4[13] = flags;
        l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
        l4.extend_from_slice(b"hello");
        Self::new(src, dst, TCP, l4)
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        let mut l4 = vec![0u8; 8];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(b"query");
        Self::new(src, dst, UDP, l4)
    }

    /// UDP with `payload` after the header.
    pub fn udp_with(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Self {
        let mut l4 = vec![0u8; 8];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(payload);
        Self::new(src, dst, UDP, l4)
    }

    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, id: u16) -> Self {
        let mut l4 = vec![kind, 0, 0, 0];
        l4.extend_from_slice(&id.to_be_bytes());
        l4.extend_from_slice(&1u16.to_be_bytes());
        l4.extend_from_slice(b"ping");
        Self::new(src, dst, ICMP, l4)
    }

    #[must_use]
    pub fn with_options(mut self, options: &[u8]) -> Self {
        assert_eq!(options.len() % 4, 0, "IP options are padded to 4 bytes");
        self.options = options.to_vec();
        self
    }

    #[must_use]
    pub fn with_frag(mut self, frag: u16) -> Self {
        self.frag = frag;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let ihl = 20 + self.options.len();
        let tot_len = u16::try_from(ihl + self.l4.len()).expect("small packet");
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | u8::try_from(ihl / 4).expect("ihl");
        ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = self.protocol;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.options);
        let csum = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());

        let mut l4 = self.l4.clone();
        match self.protocol {
            TCP if l4.len() >= 20 => {
                let c = checksum(&l4, pseudo(self.src, self.dst, TCP, l4.len()));
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
            UDP if l4.len() >= 8 => {
                let len = u16::try_from(l4.len()).expect("len");
                l4[4..6].copy_from_slice(&len.to_be_bytes());
                let c = checksum(&l4, pseudo(self.src, self.dst, UDP, l4.len()));
                l4[6..8].copy_from_slice(&c.to_be_bytes());
            }
            ICMP if l4.len() >= 8 => {
                let c = checksum(&l4, 0);
                l4[2..4].copy_from_slice(&c.to_be_bytes());
            }
            _ => {}
        }
        let mut out = Vec::with_capacity(ETH_HLEN + ip.len() + l4.len());
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        out.extend_from_slice(&0x0800u16.to_be_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&l4);
        out
    }
}

/// An ARP request frame.
pub fn arp() -> Vec<u8> {
    let mut out = vec![0xff; 6];
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    out.extend_from_slice(&0x0806u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&[0u8; 20]);
    out
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> u32 {
    let mut sum = 0u32;
    for pair in src.octets().chunks(2).chain(dst.octets().chunks(2)) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum + u32::from(protocol) + u32::try_from(len).expect("len")
}

/// The Internet checksum of `data` with `initial` (a pseudo-header sum) folded in.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial);
    for pair in data.chunks(2) {
        let word = if pair.len() == 2 {
            u16::from_be_bytes([pair[0], pair[1]])
        } else {
            u16::from_be_bytes([pair[0], 0])
        };
        sum += u64::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

fn ihl(pkt: &[u8]) -> usize {
    usize::from(pkt[ETH_HLEN] & 0x0f) * 4
}

pub fn saddr(pkt: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(pkt[26], pkt[27], pkt[28], pkt[29])
}

pub fn daddr(pkt: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(pkt[30], pkt[31], pkt[32], pkt[33])
}

pub fn ttl(pkt: &[u8]) -> u8 {
    pkt[ETH_HLEN + 8]
}

pub fn sport(pkt: &[u8]) -> u16 {
    let l4 = ETH_HLEN + ihl(pkt);
    u16::from_be_bytes([pkt[l4], pkt[l4 + 1]])
}

pub fn dport(pkt: &[u8]) -> u16 {
    let l4 = ETH_HLEN + ihl(pkt);
    u16::from_be_bytes([pkt[l4 + 2], pkt[l4 + 3]])
}

pub fn dst_mac(pkt: &[u8]) -> [u8; 6] {
    pkt[0..6].try_into().expect("6 bytes")
}

pub fn src_mac(pkt: &[u8]) -> [u8; 6] {
    pkt[6..12].try_into().expect("6 bytes")
}

/// True when the IPv4 header checksum verifies.
pub fn ip_checksum_ok(pkt: &[u8]) -> bool {
    checksum(&pkt[ETH_HLEN..ETH_HLEN + ihl(pkt)], 0) == 0
}

/// True when the TCP/UDP/ICMP checksum verifies (UDP checksum 0 = none also counts).
pub fn l4_checksum_ok(pkt: &[u8]) -> bool {
    let tot_len = usize::from(u16::from_be_bytes([pkt[ETH_HLEN + 2], pkt[ETH_HLEN + 3]]));
    let l4 = &pkt[ETH_HLEN + ihl(pkt)..ETH_HLEN + tot_len];
    let protocol = pkt[ETH_HLEN + 9];
    match protocol {
        ICMP => checksum(l4, 0) == 0,
        UDP if l4[6..8] == [0, 0] => true,
        TCP | UDP => checksum(l4, pseudo(saddr(pkt), daddr(pkt), protocol, l4.len())) == 0,
        _ => true,
    }
}

/// A VXLAN packet (RFC 7348) from `src` to `dst`, UDP port `port`: flags byte `flags`
/// (`0x08` = I flag), VNI `vni`, carrying `inner` (an Ethernet frame).
pub fn vxlan(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    flags: u8,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let mut payload = vec![flags, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    Packet::udp_with(src, 50_000, dst, port, &payload).build()
}

/// Offsets in a VXLAN packet built without outer IP options.
pub mod outer {
    pub const IP: usize = super::ETH_HLEN;
    pub const UDP: usize = IP + 20;
    pub const VXLAN: usize = UDP + 8;
    /// The inner Ethernet frame.
    pub const INNER: usize = VXLAN + 8;
}
