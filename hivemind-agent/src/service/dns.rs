//! The node's DNS server for its containers, on the gateway address (UDP and TCP port 53).
//! Service names are answered from the service table; other names are relayed to the node's
//! upstream resolvers, or refused with a fast SERVFAIL when there are none.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode},
    rr::{DNSClass, RData, Record, RecordType, rdata::A},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
};

use super::records::{Lookup, Services};

/// TTL of service answers: short, so clients follow scale and failures quickly.
pub const TTL_SECS: u32 = 5;
/// How long one upstream gets to answer a forwarded query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many upstreams are tried for one query, so a client's own timeout (dig: 5 s)
/// sees our SERVFAIL rather than silence.
const MAX_UPSTREAM_TRIES: usize = 2;
/// An idle TCP client is dropped after this.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest UDP message accepted or relayed.
const UDP_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for DNS on {addr} ({proto}); is another DNS server bound to it?")]
pub struct BindError {
    addr: SocketAddr,
    proto: &'static str,
    #[source]
    source: std::io::Error,
}

/// Binds UDP and TCP on `addr` and serves until the process ends.
pub async fn start(
    addr: SocketAddr,
    services: Services,
    upstreams: Vec<SocketAddr>,
) -> Result<(), BindError> {
    let udp = UdpSocket::bind(addr).await.map_err(|source| BindError {
        addr,
        proto: "udp",
        source,
    })?;
    let tcp = TcpListener::bind(addr).await.map_err(|source| BindError {
        addr,
        proto: "tcp",
        source,
    })?;
    tracing::info!(%addr, upstreams = ?upstreams, suffix = services.table().suffix(), "DNS serving");
    let resolver = Arc::new(Resolver {
        services,
        upstreams,
    });
    tokio::spawn(serve_udp(Arc::new(udp), resolver.clone()));
    tokio::spawn(serve_tcp(tcp, resolver));
    Ok(())
}

#[derive(Debug)]
struct Resolver {
    services: Services,
    upstreams: Vec<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

async fn serve_udp(socket: Arc<UdpSocket>, resolver: Arc<Resolver>) {
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err) => {
                tracing::debug!("DNS udp receive: {err}");
                continue;
            }
        };
        let query = buf[..len].to_vec();
        let (socket, resolver) = (socket.clone(), resolver.clone());
        // Each query on its own task: a forwarded one may wait for its upstream.
        tokio::spawn(async move {
            if let Some(answer) = resolver.answer(&query, Transport::Udp).await {
                let _ = socket.send_to(&answer, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, resolver: Arc<Resolver>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let resolver = resolver.clone();
        tokio::spawn(async move {
            let _ = serve_tcp_client(stream, &resolver).await;
        });
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2), one after another, until the client closes.
async fn serve_tcp_client(mut stream: TcpStream, resolver: &Resolver) -> std::io::Result<()> {
    loop {
        let Ok(query) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await else {
            return Ok(());
        };
        let query = query?;
        if let Some(answer) = resolver.answer(&query, Transport::Tcp).await {
            write_framed(&mut stream, &answer).await?;
        }
    }
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0u8; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| std::io::Error::other("DNS message longer than 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

impl Resolver {
    /// The answer to one wire-format query; `None` when it is not worth one (not a query).
    async fn answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let counters = self.services.counters();
        let Ok(request) = Message::from_vec(query) else {
            // Unparseable: FORMERR if there is at least an id to answer to.
            let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
            counters.dns_refused.fetch_add(1, Ordering::Relaxed);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let table = self.services.table();
        let local = match request.queries.as_slice() {
            [q] if request.metadata.op_code == OpCode::Query => {
                match table.lookup(&q.name().to_ascii()) {
                    Lookup::Outside => None,
                    found => Some(local_answer(&request, &found)),
                }
            }
            _ => Some(reply(&request, ResponseCode::NotImp)),
        };
        let message = if let Some(message) = local {
            let counter = match message.metadata.response_code {
                ResponseCode::NoError => &counters.dns_answered,
                ResponseCode::NXDomain => &counters.dns_nxdomain,
                _ => &counters.dns_refused,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            message
        } else {
            if let Some(relayed) = self.forward(query, request.metadata.id, transport).await {
                counters.dns_forwarded.fetch_add(1, Ordering::Relaxed);
                return Some(relayed);
            }
            counters.dns_servfail.fetch_add(1, Ordering::Relaxed);
            reply(&request, ResponseCode::ServFail)
        };
        let wire = message.to_vec().ok()?;
        // A UDP answer larger than the client takes is cut: the TC bit makes it ask over TCP.
        let limit = request
            .edns
            .as_ref()
            .map_or(512, |edns| usize::from(edns.max_payload().max(512)));
        if transport == Transport::Udp && wire.len() > limit {
            return message.truncate().to_vec().ok();
        }
        Some(wire)
    }

    /// The upstream's answer, relayed as it came, or `None` if none answered in time.
    async fn forward(&self, query: &[u8], id: u16, transport: Transport) -> Option<Vec<u8>> {
        for upstream in self.upstreams.iter().take(MAX_UPSTREAM_TRIES) {
            let attempt = forward_one(transport, *upstream, query);
            match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                Ok(Ok(answer)) if answer.len() >= 2 && answer[..2] == id.to_be_bytes() => {
                    return Some(answer);
                }
                Ok(Ok(_)) => tracing::debug!(%upstream, "DNS upstream answered another query id"),
                Ok(Err(err)) => tracing::debug!(%upstream, "DNS upstream: {err}"),
                Err(_) => tracing::debug!(%upstream, "DNS upstream timed out"),
            }
        }
        None
    }
}

async fn forward_one(
    transport: Transport,
    upstream: SocketAddr,
    query: &[u8],
) -> std::io::Result<Vec<u8>> {
    match transport {
        Transport::Udp => forward_udp(upstream, query).await,
        Transport::Tcp => forward_tcp(upstream, query).await,
    }
}

async fn forward_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; UDP_MAX];
    let len = socket.recv(&mut buf).await?;
    buf.truncate(len);
    Ok(buf)
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, query).await?;
    read_framed(&mut stream).await
}

/// An empty response to `request` with `code`.
fn reply(request: &Message, code: ResponseCode) -> Message {
    let mut message = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    message.metadata = Metadata::response_from_request(&request.metadata);
    message.metadata.response_code = code;
    message.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        message.set_edns(Edns::new());
    }
    message
}

/// The authoritative answer for a name in our zones: A records of the serving replicas in a
/// fresh random order (clients that take the first spread out), empty for other types,
/// NXDOMAIN for unknown names.
fn local_answer(request: &Message, found: &Lookup<'_>) -> Message {
    let mut message = reply(request, ResponseCode::NoError);
    message.metadata.authoritative = true;
    // We also forward; say so, or stub resolvers warn.
    message.metadata.recursion_available = true;
    let Some(query) = request.queries.first() else {
        return message;
    };
    match found {
        Lookup::Service(service) => {
            let wants_a = matches!(query.query_type(), RecordType::A | RecordType::ANY)
                && matches!(query.query_class(), DNSClass::IN | DNSClass::ANY);
            if wants_a {
                let mut endpoints = service.endpoints.clone();
                fastrand::shuffle(&mut endpoints);
                for ip in endpoints {
                    message.add_answer(Record::from_rdata(
                        query.name().clone(),
                        TTL_SECS,
                        RData::A(A(ip)),
                    ));
                }
            }
        }
        Lookup::Unknown | Lookup::Outside => {
            message.metadata.response_code = ResponseCode::NXDomain;
        }
    }
    message
}

/// `--dns-upstream` values: `IP` or `IP:PORT` (port 53 by default).
pub fn parse_upstream(value: &str) -> Option<SocketAddr> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    value.parse::<SocketAddr>().ok()
}

/// The default upstreams: the nameservers of a resolv.conf that are not loopback (a loopback
/// resolver such as systemd-resolved's 127.0.0.53 answers in the host's namespace, not in the
/// node's).
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The resolv.conf every container gets: the node's DNS server and the suffix to search,
/// and first its stack's zone for an app of a stack (so `api` finds the stack's service).
pub fn container_resolv_conf(gateway: Ipv4Addr, suffix: &str, stack: Option<&str>) -> String {
    let search = match stack {
        Some(stack) => format!("{stack}.{suffix} {suffix}"),
        None => suffix.to_owned(),
    };
    format!(
        "# Written by hivemind: the node's DNS server answers <app>.{suffix} and service domains.\nnameserver {gateway}\nsearch {search}\noptions ndots:1\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_upstreams() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nnameserver 2001:db8::1\nsearch corp\nnameserver bogus\n";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            [
                "10.0.0.2:53".parse::<SocketAddr>().expect("addr"),
                "[2001:db8::1]:53".parse().expect("addr"),
            ]
        );
        assert_eq!(
            upstreams_from_resolv_conf("nameserver 127.0.0.1\n"),
            [] as [SocketAddr; 0]
        );
    }

    #[test]
    fn upstream_flags() {
        assert_eq!(
            parse_upstream("10.0.0.2"),
            Some("10.0.0.2:53".parse().expect("addr"))
        );
        assert_eq!(
            parse_upstream("10.0.0.2:5353"),
            Some("10.0.0.2:5353".parse().expect("addr"))
        );
        assert_eq!(parse_upstream("dns.example"), None);
    }

    #[test]
    fn container_resolv_conf_points_at_the_gateway() {
        let text = container_resolv_conf(Ipv4Addr::new(10, 244, 3, 1), "hivemind", None);
        assert!(text.contains("nameserver 10.244.3.1\n"), "{text}");
        assert!(text.contains("search hivemind\n"), "{text}");
    }
}
