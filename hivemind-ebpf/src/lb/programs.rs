//! The three `sock_addr` programs and their maps.

use core::ptr::{addr_of, addr_of_mut};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    btf_maps::{HashMap, LruHashMap},
    helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie, generated::bpf_set_retval},
    macros::{btf_map, cgroup_sock_addr},
    programs::SockAddrContext,
};
use hivemind_common::lb::{
    BACKENDS_MAX_ENTRIES, LbBackend, LbBackendKey, LbKey, LbRevKey, LbRevValue, LbService,
    PROTO_TCP, PROTO_UDP, REVNAT_MAX_ENTRIES, SERVICES_MAX_ENTRIES,
};

#[btf_map(name = "HM_LB_SERVICES", pin_by_name)]
static SERVICES: HashMap<LbKey, LbService, { SERVICES_MAX_ENTRIES as usize }> = HashMap::new();

#[btf_map(name = "HM_LB_BACKENDS", pin_by_name)]
static BACKENDS: HashMap<LbBackendKey, LbBackend, { BACKENDS_MAX_ENTRIES as usize }> =
    HashMap::new();

#[btf_map(name = "HM_LB_REVNAT", pin_by_name)]
static REVNAT: LruHashMap<LbRevKey, LbRevValue, { REVNAT_MAX_ENTRIES as usize }> =
    LruHashMap::new();

/// `sock_addr` verdicts.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const SOCK_STREAM: u32 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Connect,
    SendMsg,
}

#[cgroup_sock_addr(connect4)]
pub fn hm_lb_connect4(ctx: SockAddrContext) -> i32 {
    balance(&ctx, Hook::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn hm_lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    balance(&ctx, Hook::SendMsg)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn hm_lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's context; 4-byte reads of these fields are what the verifier
    // allows.
    let (ip, port) = unsafe {
        (
            addr_of!((*sa).user_ip4).read_volatile(),
            addr_of!((*sa).user_port).read_volatile(),
        )
    };
    let key = LbRevKey {
        // SAFETY: a helper valid for every sock_addr program.
        cookie: unsafe { bpf_get_socket_cookie(sa.cast()) },
        ip,
        port: port_host(port),
        _pad: 0,
    };
    if let Some(orig) = REVNAT.get_ptr(&key) {
        // SAFETY: a value pointer the lookup just returned, copied out at once.
        let orig = unsafe { *orig };
        write_addr(sa, orig.ip, orig.port);
    }
    ALLOW
}

/// Rewrites a VIP destination to one of its backends; anything else passes untouched.
#[inline(always)]
fn balance(ctx: &SockAddrContext, hook: Hook) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in `hm_lb_recvmsg4`.
    let (ip, raw_port, protocol, sock_type) = unsafe {
        (
            addr_of!((*sa).user_ip4).read_volatile(),
            addr_of!((*sa).user_port).read_volatile(),
            addr_of!((*sa).protocol).read_volatile(),
            addr_of!((*sa).type_).read_volatile(),
        )
    };
    let protocol = match (protocol, sock_type) {
        (6, _) | (0, SOCK_STREAM) => PROTO_TCP,
        (17 | 0, _) => PROTO_UDP,
        _ => return ALLOW,
    };
    let port = port_host(raw_port);
    let mut key = LbKey {
        ip,
        port,
        protocol,
        _pad: 0,
    };
    // The exact port first, then the VIP's every-port entry.
    let exact = lookup_service(&key);
    key.port = 0;
    let Some(service) = exact.or_else(|| lookup_service(&key)) else {
        return ALLOW;
    };
    if service.count == 0 {
        return refuse();
    }
    // SAFETY: a helper valid for every sock_addr program.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // A TCP connection or a connected UDP socket picks at random; unconnected UDP sends stay
    // with one replica per socket (a client's request and retries reach the same one).
    let pick = match hook {
        // SAFETY: a helper without preconditions.
        Hook::Connect => unsafe { bpf_get_prandom_u32() },
        #[allow(clippy::cast_possible_truncation)]
        Hook::SendMsg => (cookie ^ (cookie >> 32)) as u32,
    };
    let slot = LbBackendKey {
        id: service.id,
        slot: service.base + pick % service.count,
    };
    let Some(backend) = BACKENDS.get_ptr(&slot) else {
        // The agent writes backends before the count that names them; a miss means the
        // service is being torn down.
        return refuse();
    };
    // SAFETY: a value pointer the lookup just returned, copied out at once.
    let backend = unsafe { *backend };
    let backend_port = if backend.port == 0 {
        port
    } else {
        backend.port
    };
    if protocol == PROTO_UDP {
        let rev = LbRevKey {
            cookie,
            ip: backend.ip,
            port: backend_port,
            _pad: 0,
        };
        let orig = LbRevValue { ip, port, _pad: 0 };
        // Best effort: without it only the replies' source address differs.
        let _ = REVNAT.insert(&rev, &orig, 0);
    }
    write_addr(sa, backend.ip, backend_port);
    ALLOW
}

#[inline(always)]
fn lookup_service(key: &LbKey) -> Option<LbService> {
    // SAFETY: a value pointer the lookup just returned, copied out at once.
    SERVICES.get_ptr(key).map(|service| unsafe { *service })
}

/// Fails the syscall with `ECONNREFUSED` instead of the generic `EPERM` of a rejection.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: allowed for connect4 and sendmsg4 (kernel 5.18+); it only sets the return value.
    unsafe {
        bpf_set_retval(-ECONNREFUSED);
    }
    REJECT
}

/// `user_port` holds the port in network order in its low 16 bits.
#[inline(always)]
#[allow(clippy::cast_possible_truncation)]
fn port_host(raw: u32) -> u16 {
    u16::from_be(raw as u16)
}

#[inline(always)]
fn write_addr(sa: *mut bpf_sock_addr, ip: u32, port: u16) {
    // SAFETY: 4-byte writes of `user_ip4` and `user_port` are what sock_addr programs may do.
    unsafe {
        addr_of_mut!((*sa).user_ip4).write_volatile(ip);
        addr_of_mut!((*sa).user_port).write_volatile(u32::from(port.to_be()));
    }
}
