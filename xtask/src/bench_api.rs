//! `cargo xtask bench api [--quick]`: the REST API benchmark (`tests/src/bench_api.rs`, run as
//! the ignored test `tests/tests/bench_api.rs`) against the release agent (the harness itself
//! is the debug build the tests use). Prints the report and writes it to `target/bench/api.md`.
//! Dispatched by name from [`crate::bench`].

use crate::{cmd, setup};

pub fn run(quick: bool) -> anyhow::Result<()> {
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
    let mut test = cmd::cargo_host(&[
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
    .env("HIVEMIND_BENCH_REPORT", &report);
    if quick {
        test = test.env("HIVEMIND_BENCH_QUICK", "1");
    }
    test.run()?;
    println!("bench api: report in {}", report.display());
    Ok(())
}
