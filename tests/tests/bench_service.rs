//! Entry point of `cargo xtask bench service` (ignored by `cargo test`: a benchmark, not a test).

#[test]
#[ignore = "a benchmark: run it with `cargo xtask bench service`"]
fn bench_service() {
    let report = hivemind_tests::bench_service::bench_service();
    println!("\n{report}");
    if let Ok(path) = std::env::var("HIVEMIND_BENCH_REPORT") {
        std::fs::write(&path, &report).unwrap_or_else(|err| panic!("write {path}: {err}"));
    }
}
