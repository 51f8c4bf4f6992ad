//! `hivemind-lb`: socket-level load balancing of service VIPs, a separate object from the
//! packet programs (its own maps, its own hooks: cgroup `sock_addr`, not TC).
//!
//! A connect (or an unconnected UDP send) to `VIP:port` is rewritten to `replica:port` before
//! the kernel routes anything, so every packet of the connection carries the replica's address
//! and the TC programs, policies and conntrack see an ordinary container-to-container flow: no
//! per-packet NAT, no reverse translation for TCP. UDP replies read with `recvmsg` get the VIP
//! written back as their source.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![allow(clippy::inline_always)]
#![allow(clippy::needless_pass_by_value)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// `bpf_get_socket_cookie` and `bpf_set_retval` are fine under any license, but the object
/// shares the packet programs' license string so both load the same way.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier proves no path reaches a panic; this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}
