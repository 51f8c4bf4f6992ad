//! `cargo xtask test`: setup if needed, then every test — unit tests of every crate and the
//! root-only integration tests in `tests/` — ending with one summary line.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
};

use anyhow::{Context as _, bail};

use crate::{cmd, setup};

pub fn run(filter: &[String]) -> anyhow::Result<()> {
    setup::ensure()?;
    if !is_root() {
        bail!("the integration tests create network namespaces and load BPF programs: run as root");
    }
    // The integration tests drive the real binary.
    cmd::cargo_host(&["build", "--package", "hivemind-agent", "--bin", "hivemind"]).run()?;
    let binary = cmd::root().join("target/debug/hivemind");

    let mut test = cmd::cargo_host(&[
        "test",
        "--workspace",
        "--exclude",
        "hivemind-ebpf",
        "--no-fail-fast",
    ])
    .env("HIVEMIND_BIN", &binary);
    if !filter.is_empty() {
        test = test.args(["--"]).args(filter);
    }
    let mut child = test
        .command()
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;

    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!(
        "\nxtask test: {} passed; {} failed; {} ignored ({} test binaries)",
        totals.passed, totals.failed, totals.ignored, totals.binaries
    );
    if !status.success() || totals.failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

pub fn is_root() -> bool {
    cmd::Cmd::new("id")
        .args(["-u"])
        .read()
        .is_ok_and(|uid| uid.trim() == "0")
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    binaries: u64,
}

impl Totals {
    /// Adds one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match kind {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}
