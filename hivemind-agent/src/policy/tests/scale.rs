//! The benchmark generator and the compiler at 100 000 rules.

use super::*;

#[test]
fn synthetic_sets_have_the_requested_number_of_rules() {
    for n in [0, 1, 31, 32, 33, 1000] {
        let policies = synthetic(n);
        let count: usize = policies
            .iter()
            .map(|p| {
                p.ingress
                    .iter()
                    .chain(&p.egress)
                    .map(Vec::len)
                    .sum::<usize>()
                    + p.deny.len()
            })
            .sum();
        assert_eq!(count, n);
        // They are valid: they survive a trip through YAML.
        for p in policies.iter().take(3) {
            let yaml = serde_norway::to_string(&p.to_document()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parse(&yaml), vec![p.clone()]);
        }
    }
}

/// Run with `--nocapture` to see the time; no assertion on it (timing is for benchmarks).
#[test]
fn compile_100_000_rules() {
    let policies = synthetic(100_000);
    let apps = synthetic_apps(100_000);
    let refs: Vec<PolicyRef<'_>> = policies
        .iter()
        .zip(1..)
        .map(|(policy, id)| PolicyRef { id, policy })
        .collect();
    let start = std::time::Instant::now();
    let c = compile(&refs, &apps);
    let elapsed = start.elapsed();
    println!(
        "compiled {} policies / 100000 rules / {} apps into {} entries and {} CIDRs in {elapsed:?}",
        policies.len(),
        apps.len(),
        c.entries.len(),
        c.cidrs.len()
    );
    assert!(
        c.warnings.is_empty(),
        "{:?}",
        &c.warnings[..c.warnings.len().min(5)]
    );
    assert!(c.entries.len() >= 100_000, "{}", c.entries.len());
    assert!(c.check_capacity().is_ok());
}
