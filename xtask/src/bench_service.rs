//! `cargo xtask bench service`: requests/s and p99 through an app's VIP and through the HTTP
//! router against straight to one replica, and DNS queries/s (`tests/src/bench_service.rs`),
//! against the release build. Prints the report and writes it to `target/bench/service.md`.

use crate::{cmd, setup};

pub fn run() -> anyhow::Result<()> {
    setup::ensure()?;
    cmd::cargo_host(&[
        "build",
        "--release",
        "--package",
        "hivemind-agent",
        "--bin",
        "hivemind",
    ])
    .run()?;
    let root = cmd::root();
    let report = root.join("target/bench/service.md");
    std::fs::create_dir_all(root.join("target/bench"))?;
    cmd::cargo_host(&[
        // The same package selection as `cargo xtask test`, so the build is shared.
        "test",
        "--workspace",
        "--exclude",
        "hivemind-ebpf",
        "--test",
        "bench_service",
        "--",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("HIVEMIND_BIN", root.join("target/release/hivemind"))
    .env("HIVEMIND_BENCH_REPORT", &report)
    .run()?;
    println!("bench service: report in {}", report.display());
    Ok(())
}
