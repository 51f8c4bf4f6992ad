//! `cargo xtask bench [NAME...] [--quick] [--reps N] [--out DIR]`: setup if needed, a release
//! build of the agent and of the bench binary (`tests/src/bin/hivemind-bench`), then the
//! benches. Without a name it lists them. The benches live in the bench binary, so adding one
//! never touches xtask.

use anyhow::bail;

use crate::{cmd, setup, test::is_root};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    setup::ensure()?;
    let listing = args.is_empty() || args.iter().any(|a| a == "list");
    if !listing && !is_root() {
        bail!(
            "the benches create network namespaces, load BPF programs and run containerd: run as root"
        );
    }
    cmd::cargo_host(&[
        "build",
        "--release",
        "--package",
        "hivemind-agent",
        "--bin",
        "hivemind",
        "--package",
        "hivemind-tests",
        "--bin",
        "hivemind-bench",
    ])
    .run()?;
    let release = cmd::root().join("target/release");
    // Ctrl-C reaches the bench too (same process group): it stops at the next step and its
    // guards remove the namespaces, pins and processes it made.
    let list = ["list".to_owned()];
    cmd::Cmd::new(release.join("hivemind-bench"))
        .env("HIVEMIND_BIN", release.join("hivemind"))
        .args(if listing { &list[..] } else { args })
        .run()
}
