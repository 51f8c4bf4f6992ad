//! Building and linting the eBPF crate on its own, as the agent's build.rs does.

use std::path::PathBuf;

use crate::{cmd, setup, toolchain};

const TARGET: &str = "bpfel-unknown-none";

fn cargo_ebpf(subcommand: &str) -> cmd::Cmd {
    cmd::Cmd::new("cargo")
        .args([
            &format!("+{}", toolchain::EBPF),
            subcommand,
            "--package",
            "hivemind-ebpf",
            "--bins",
            "--release",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .args([cmd::root().join("target/ebpf")])
        .env("PATH", cmd::path_with_cargo_bin())
        // The same flags aya-build passes, so this object is the one the agent embeds.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        )
}

pub fn build() -> anyhow::Result<PathBuf> {
    setup::ensure()?;
    cargo_ebpf("build").run()?;
    Ok(cmd::root()
        .join("target/ebpf")
        .join(TARGET)
        .join("release/hivemind"))
}

pub fn clippy() -> anyhow::Result<()> {
    cargo_ebpf("clippy")
        .args(["--", "-D", "warnings", "-C", "panic=abort"])
        .run()
}
