//! The pinned toolchains, in one place. `hivemind-agent/build.rs` repeats `EBPF` for aya-build.

/// Host code (agent, tests). aya 0.16 needs Rust >= 1.98.
pub const HOST: &str = "1.99.1";
/// eBPF code, built with `-Z build-std=core`; bpf-linker links against this nightly's LLVM.
pub const EBPF: &str = "nightly-2026-10-29";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// bpf-linker's cargo feature for the nightly's LLVM major version.
pub const BPF_LINKER_LLVM_FEATURE: &str = "llvm-23";
/// Where the symlinks to the nightly's libLLVM live (bpf-linker's RUNPATH points here).
pub const LLVM_PREFIX: &str = "/opt/hivemind/llvm";
