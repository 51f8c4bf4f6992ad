//! Rebuild the programs when bpf-linker changes (a new linker can change the object).
fn main() {
    let bpf_linker =
        which::which("bpf-linker").expect("bpf-linker not on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
