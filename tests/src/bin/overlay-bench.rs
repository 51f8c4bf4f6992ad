//! `overlay-bench`: the overlay benchmark (`cargo xtask bench overlay`); see
//! `hivemind_tests::bench_overlay`.

fn main() -> std::process::ExitCode {
    hivemind_tests::bench_overlay::main()
}
