//! `cargo xtask bench overlay [--quick] [--reps N]`: a release build of the overlay benchmark
//! (`tests/src/bin/overlay-bench.rs`, see `hivemind_tests::bench_overlay`), then the run.
//! To be folded into the bench framework's `cargo xtask bench <name>`.

use anyhow::bail;

use crate::{cmd, setup};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("overlay") => {}
        None | Some("list") => {
            println!(
                "benches:\n  overlay   container↔container across nodes: Hivemind's overlay vs kernel VXLAN + bridge vs the routed underlay"
            );
            return Ok(());
        }
        Some(other) => bail!("unknown bench {other:?} (try `cargo xtask bench list`)"),
    }
    setup::ensure()?;
    let uid = cmd::Cmd::new("id").args(["-u"]).read()?;
    if uid.trim() != "0" {
        bail!("the overlay bench creates network namespaces and loads BPF programs: run as root");
    }
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
        .args(&args[1..])
        .args(["--out", "target/bench"])
        .run()
}
