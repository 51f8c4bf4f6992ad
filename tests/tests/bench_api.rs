//! Entry point of `cargo xtask bench api` (ignored by `cargo test`: a benchmark, not a test).

#[test]
#[ignore = "a benchmark: run it with `cargo xtask bench api`"]
fn bench_api() {
    let report = hivemind_tests::bench_api::bench_api();
    println!("\n{report}");
    if let Ok(path) = std::env::var("HIVEMIND_BENCH_REPORT") {
        std::fs::write(&path, &report).unwrap_or_else(|err| panic!("write {path}: {err}"));
    }
}
