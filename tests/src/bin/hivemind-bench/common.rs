//! What every bench shares: options, interleaved rounds, interruption, commands.

use std::{
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use hivemind_tests::Netns;

/// Command-line options every bench gets.
#[derive(Clone, Debug)]
pub struct Options {
    /// Fewer and shorter repetitions.
    pub quick: bool,
    /// Repetitions, overriding the bench's default.
    pub reps: Option<usize>,
    /// Where results go.
    pub out: PathBuf,
}

impl Options {
    /// `--reps` if given, else `quick` in quick mode, else `full`.
    pub fn reps(&self, full: usize, quick: usize) -> usize {
        self.reps.unwrap_or(if self.quick { quick } else { full })
    }

    /// `quick` in quick mode, else `full`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that [`check_interrupted`] turns into a panic, so an
/// interrupted bench unwinds and its guards remove namespaces, pins and processes. (The tools
/// the bench runs get the same Ctrl-C from the terminal and end; the measurement in flight
/// fails, which unwinds too.)
pub fn install_interrupt_handler() {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, handler as libc::sighandler_t);
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Panics (unwinding through the guards) once the user asked to stop.
pub fn check_interrupted() {
    assert!(!interrupted(), "interrupted");
}

/// Runs `rounds` rounds over `variants` variants, calling `measure(round, variant)`. Round `r`
/// starts with variant `r % variants` and goes on in order, so every variant is measured in
/// every position and slow drifts of a shared machine hit them all alike.
pub fn interleave(rounds: usize, variants: usize, mut measure: impl FnMut(usize, usize)) {
    for round in 0..rounds {
        for k in 0..variants {
            check_interrupted();
            measure(round, (round + k) % variants);
        }
    }
}

/// Panics with the command's output unless it succeeded.
pub fn ensure_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// This binary, to start its tools inside namespaces.
pub fn self_exe() -> PathBuf {
    std::env::current_exe().expect("the path of hivemind-bench itself")
}

/// Niceness of the processes that make measured traffic. The machine is shared (other
/// people's compile jobs run at nice 0); a modest boost keeps their share of a measurement
/// small without starving them, and applies to every path alike.
pub const TRAFFIC_NICE: &str = "-10";

/// `PROGRAM` inside `netns` at [`TRAFFIC_NICE`]; add its arguments to the result.
pub fn traffic(netns: &Netns, program: &str) -> Command {
    let mut command = netns.command("nice");
    command.args(["-n", TRAFFIC_NICE, program]);
    command
}

/// `hivemind-bench TOOL ARGS` inside `netns` at [`TRAFFIC_NICE`], pinned to `cpu`.
pub fn tool_in(netns: &Netns, cpu: u32, tool: &str, args: &[String]) -> Command {
    let mut command = traffic(netns, "taskset");
    command
        .arg("-c")
        .arg(cpu.to_string())
        .arg(self_exe())
        .arg(tool)
        .args(args);
    command
}

/// Milliseconds as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
