//! `hivemind-bench`: Hivemind's benchmarks, run by `cargo xtask bench <name> [--quick]`.
//!
//! Every bench measures Hivemind and its baselines in the same run, interleaving them
//! (round `r` starts with a different variant) and repeating, and reports medians and paired
//! ratios (the median of the per-round ratios). It prints a table and writes the numbers as
//! JSON under `target/bench/`. Benches never assert timings; the binary exits non-zero only
//! when a bench could not run.
//!
//! Adding a bench: a module with a `pub const BENCH: Bench` and one line in [`BENCHES`].
//!
//! The binary also carries the small traffic tools the benches start inside namespaces
//! (`rr-server`, `rr-client`, `udp-flood`; see [`tools`]).

mod common;
mod datapath;
mod deploy;
mod report;
mod tools;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

pub use common::Options;
pub use report::Report;

/// One benchmark: a name for the command line and a function that runs it.
#[derive(Debug)]
pub struct Bench {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Options) -> Report,
}

/// Every bench, in the order `list` shows them.
const BENCHES: &[Bench] = &[deploy::BENCH, datapath::BENCH];

const USAGE: &str = "\
usage: hivemind-bench list
       hivemind-bench <bench>... [--quick] [--reps N] [--out DIR]

  --quick    fewer and shorter repetitions (a smoke run; numbers are noisier)
  --reps N   repetitions per measurement (overrides the bench's default)
  --out DIR  where to write the JSON results [default: target/bench]

Run as root (namespaces, BPF); `cargo xtask bench` builds everything and runs this.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("list") => {
            list();
            ExitCode::SUCCESS
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(tool) if tools::is_tool(tool) => tools::main(tool, &args[1..]),
        Some(_) => run(&args),
    }
}

fn list() {
    println!("benches (run one with `cargo xtask bench <name> [--quick]`):");
    for bench in BENCHES {
        println!("  {:<10} {}", bench.name, bench.about);
    }
}

fn run(args: &[String]) -> ExitCode {
    let (names, options) = match parse(args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("hivemind-bench: {message}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    use_sibling_agent();
    common::install_interrupt_handler();
    let mut failed = Vec::new();
    for bench in names {
        let started = Instant::now();
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        eprintln!("bench {}: starting", bench.name);
        let load_before = report::loadavg();
        // Fixtures panic with a message when something cannot be set up; their guards clean
        // up while the panic unwinds. A failed bench must not stop the next one.
        let outcome = std::panic::catch_unwind(|| (bench.run)(&options));
        match outcome {
            Ok(mut report) => {
                report.elapsed_secs = started.elapsed().as_secs_f64();
                report.load = (load_before, report::loadavg());
                print!("{}", report.render());
                match report.write(&options.out, started_unix) {
                    Ok(path) => println!("\nresults: {}", path.display()),
                    Err(err) => {
                        eprintln!("bench {}: cannot write results: {err}", bench.name);
                        failed.push(bench.name);
                    }
                }
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                eprintln!("\nbench {} could not run: {message}", bench.name);
                failed.push(bench.name);
            }
        }
        if common::interrupted() {
            break;
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("hivemind-bench: failed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

/// Benches drive the `hivemind` binary `$HIVEMIND_BIN` names (as `cargo xtask bench` sets
/// it); run by hand, they use the one built beside this binary (the release build), not the
/// fixtures' default debug build.
fn use_sibling_agent() {
    if std::env::var_os("HIVEMIND_BIN").is_some() {
        return;
    }
    let sibling = common::self_exe().with_file_name("hivemind");
    if sibling.exists() {
        // SAFETY: called at the start of `main`, before this process starts any thread.
        unsafe { std::env::set_var("HIVEMIND_BIN", &sibling) };
    }
}

fn parse(args: &[String]) -> Result<(Vec<&'static Bench>, Options), String> {
    let mut names = Vec::new();
    let mut options = Options {
        quick: false,
        reps: None,
        out: std::fs::canonicalize(hivemind_tests::util::workspace())
            .unwrap_or_else(|_| hivemind_tests::util::workspace())
            .join("target/bench"),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--reps" => {
                let value = args.next().ok_or("--reps needs a number")?;
                let reps: usize = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--reps: not a positive number: {value}"))?;
                options.reps = Some(reps);
            }
            "--out" => {
                options.out = PathBuf::from(args.next().ok_or("--out needs a directory")?);
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            name => {
                let bench = BENCHES
                    .iter()
                    .find(|b| b.name == name)
                    .ok_or_else(|| format!("no bench named {name:?} (try `list`)"))?;
                names.push(bench);
            }
        }
    }
    if names.is_empty() {
        return Err("name a bench".to_owned());
    }
    Ok((names, options))
}
