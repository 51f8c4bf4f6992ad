//! `cargo xtask`: the project's own tasks. Runs on the machine's preinstalled stable Rust (it has
//! no dependency on the agent, whose build needs bpf-linker); it installs the pinned toolchains
//! and runs the real builds as `cargo +<pinned> ...`.

mod bench;
mod bench_api;
mod bench_overlay;
mod bench_service;
mod cmd;
mod ebpf;
mod setup;
mod stack;
mod test;
mod toolchain;

use anyhow::bail;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  setup        install what this project needs on Debian 12 (apt packages, pinned toolchains,
               bpf-linker); a second run changes nothing
  build-ebpf   build the eBPF object on its own and print its path
  lint         rustfmt check, clippy -D warnings on host crates and on the eBPF crate
  up           setup, release build, start containerd (if none runs) and a single-node agent
               with the web UI on http://127.0.0.1:3000
  down         stop what `up` started
  test         setup, then every test: unit and root integration tests
  bench [NAME...] [--quick] [--reps N]
               release build, then the named benchmarks (root): deploy, datapath, overlay,
               service, api; without a name, list them. Tables on stdout, results under
               target/bench/
";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "setup" => setup::run(),
        "build-ebpf" => ebpf::build().map(|path| println!("{}", path.display())),
        "lint" => lint(),
        "up" => stack::up(),
        "down" => stack::down(),
        "test" => test::run(&rest),
        "bench" => bench::run(&rest),
        "" | "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n\n{USAGE}"),
    }
}

fn lint() -> anyhow::Result<()> {
    setup::ensure()?;
    cmd::cargo_host(&["fmt", "--all", "--check"]).run()?;
    cmd::cargo_host(&[
        "clippy",
        "--workspace",
        "--exclude",
        "hivemind-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
    .run()?;
    ebpf::clippy()?;
    println!("lint: ok");
    Ok(())
}
