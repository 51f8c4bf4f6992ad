//! Hivemind's kernel programs. Each program is a thin entry that calls a `try_` function and
//! returns the verdict it computed; every error path ends in an explicit verdict and a counter.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// BPF-to-BPF calls cost stack and verifier budget; helpers are inlined on purpose.
#![allow(clippy::inline_always)]
// Program entry points take their context by value: the aya macros dictate the signature.
#![allow(clippy::needless_pass_by_value)]

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod overlay;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// The programs call GPL-only helpers (`bpf_fib_lookup`), so the kernel needs a GPL-compatible
/// license string on the object; the crate's source stays under the workspace license.
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
