//! `cargo xtask bench [NAME...] [--quick] [--reps N] [--out DIR]`: setup if needed, the release
//! builds a bench needs, then the named benches in the order given. Without a name it lists
//! them.
//!
//! Each name is dispatched in [`run_one`]: `deploy` and `datapath` live in the bench binary
//! (`tests/src/bin/hivemind-bench`); `api` has its own runner ([`crate::bench_api`]). Adding a
//! bench with its own runner: a line in [`BENCHES`] and an arm in [`run_one`].

use anyhow::bail;

use crate::{bench_api, bench_overlay, bench_service, cmd, setup, test::is_root};

/// Every bench, in the order the listing shows them: name and what it measures.
const BENCHES: &[(&str, &str)] = &[
    (
        "deploy",
        "`app deploy` → running vs `ctr run -d`; `app scale` 0→20 (about 1 minute)",
    ),
    (
        "datapath",
        "container↔container throughput and RR vs a Linux bridge; policy cost vs iptables at 10..100k rules (about 8 minutes)",
    ),
    (
        "overlay",
        "container↔container across nodes: Hivemind's overlay vs kernel VXLAN + bridge vs the routed underlay (about 5 minutes)",
    ),
    (
        "service",
        "HTTP through a service VIP and through the HTTP router vs straight to a replica (wrk); DNS queries/s (dnsperf); report in target/bench/service.md",
    ),
    (
        "api",
        "the REST API under load (wrk, `GET /api/containers` with 100 containers); report in target/bench/api.md (about 2 minutes)",
    ),
];

/// What the command line asked for: bench names, and the options passed on to each.
struct Request {
    names: Vec<String>,
    quick: bool,
    /// `--reps N` and `--out DIR` as given; only the bench binary takes them.
    binary_options: Vec<String>,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let request = parse(args)?;
    if request.names.is_empty() {
        list();
        return Ok(());
    }
    // Checked before anything runs, so a long bench is not wasted on a later bad name.
    if !request.binary_options.is_empty()
        && let Some(name) = request
            .names
            .iter()
            .find(|n| *n == "api" || *n == "service")
    {
        bail!(
            "bench {name} takes only --quick (not {})",
            request.binary_options.join(" ")
        );
    }
    setup::ensure()?;
    if !is_root() {
        bail!(
            "the benches create network namespaces, load BPF programs and run containerd: run as root"
        );
    }
    let mut binary_built = false;
    for name in &request.names {
        run_one(name, &request, &mut binary_built)?;
    }
    Ok(())
}

fn run_one(name: &str, request: &Request, binary_built: &mut bool) -> anyhow::Result<()> {
    match name {
        "deploy" | "datapath" => {
            if !*binary_built {
                build_bench_binary()?;
                *binary_built = true;
            }
            let release = cmd::root().join("target/release");
            let mut args = vec![name.to_owned()];
            if request.quick {
                args.push("--quick".to_owned());
            }
            args.extend(request.binary_options.iter().cloned());
            // Ctrl-C reaches the bench too (same process group): it stops at the next step and
            // its guards remove the namespaces, pins and processes it made.
            cmd::Cmd::new(release.join("hivemind-bench"))
                .env("HIVEMIND_BIN", release.join("hivemind"))
                .args(&args)
                .run()
        }
        "overlay" => {
            let mut options = request.binary_options.clone();
            if request.quick {
                options.push("--quick".to_owned());
            }
            bench_overlay::run(&options)
        }
        "service" => bench_service::run(),
        "api" => bench_api::run(request.quick),
        other => unreachable!("parse accepted an unknown bench {other:?}"),
    }
}

fn parse(args: &[String]) -> anyhow::Result<Request> {
    let mut request = Request {
        names: Vec::new(),
        quick: false,
        binary_options: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "list" => {}
            "--quick" => request.quick = true,
            "--reps" | "--out" => {
                let Some(value) = args.next() else {
                    bail!("{arg} needs a value");
                };
                request.binary_options.extend([arg.clone(), value.clone()]);
            }
            flag if flag.starts_with('-') => {
                bail!("unknown option {flag} (bench options: --quick, --reps N, --out DIR)");
            }
            name if BENCHES.iter().any(|(known, _)| *known == name) => {
                request.names.push(name.to_owned());
            }
            name => bail!(
                "no bench named {name:?}; benches: {}",
                BENCHES
                    .iter()
                    .map(|(known, _)| *known)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(request)
}

fn list() {
    println!("benches (run with `cargo xtask bench <name>... [--quick]`, as root):");
    for (name, about) in BENCHES {
        println!("  {name:<10} {about}");
    }
    println!("results: tables on stdout, files under target/bench/; see docs/benchmarks.md");
}

/// The release agent and the bench binary that drives it.
fn build_bench_binary() -> anyhow::Result<()> {
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
    .run()
}
