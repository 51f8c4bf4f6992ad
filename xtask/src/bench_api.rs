//! `cargo xtask bench api`: the REST API benchmark (`tests/src/bench_api.rs`) against the
//! release build (the harness itself is the debug build the tests use). Prints the report and writes it to `target/bench/api.md`.

use anyhow::bail;

use crate::{cmd, setup};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("api") => {}
        other => bail!("unknown benchmark {other:?}; available: api"),
    }
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
    let report = root.join("target/bench/api.md");
    std::fs::create_dir_all(root.join("target/bench"))?;
    cmd::cargo_host(&[
        // The same package selection as `cargo xtask test`, so the build is shared (one
        // package alone would unify features differently and rebuild half the tree).
        "test",
        "--workspace",
        "--exclude",
        "hivemind-ebpf",
        "--test",
        "bench_api",
        "--",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("HIVEMIND_BIN", root.join("target/release/hivemind"))
    .env("HIVEMIND_BENCH_REPORT", &report)
    .run()?;
    println!("bench api: report in {}", report.display());
    Ok(())
}
