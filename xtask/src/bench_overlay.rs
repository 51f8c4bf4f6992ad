//! `cargo xtask bench overlay [--quick] [--reps N]`: a release build of the overlay benchmark
//! (`tests/src/bin/overlay-bench.rs`, see `hivemind_tests::bench_overlay`), then the run.
//! [`crate::bench`] has checked the options and that we run as root.

use crate::cmd;

/// `options`: `--quick`, `--reps N`, `--out DIR` as given to `cargo xtask bench`.
pub fn run(options: &[String]) -> anyhow::Result<()> {
    cmd::cargo_host(&[
        "build",
        "--release",
        "--package",
        "hivemind-tests",
        "--bin",
        "overlay-bench",
    ])
    .run()?;
    cmd::Cmd::new(cmd::root().join("target/release/overlay-bench"))
        .args(options)
        .args(if options.iter().any(|o| o == "--out") {
            &[][..]
        } else {
            &["--out", "target/bench"][..]
        })
        .run()
}
