//! Builds the two things the agent embeds: the eBPF object (with the pinned nightly, through
//! aya-build) and the gRPC API (protoc, through tonic-prost-build).
use anyhow::Context as _;

/// The nightly that builds `hivemind-ebpf`. Keep in sync with `xtask/src/toolchain.rs`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-29";

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "hivemind-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../hivemind-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
        .context("building the eBPF programs (is bpf-linker installed? run `cargo xtask setup`)")?;

    println!("cargo:rerun-if-changed=proto/hivemind.proto");
    tonic_prost_build::configure()
        // One API model for both transports: the REST API serves these same messages as JSON.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".", "#[serde(default)]")
        // ... and documents them in the OpenAPI schema it serves.
        .type_attribute(".", "#[derive(utoipa::ToSchema)]")
        .compile_protos(&["proto/hivemind.proto"], &["proto"])
        .context("compiling proto/hivemind.proto (is protoc installed? run `cargo xtask setup`)")?;
    Ok(())
}
