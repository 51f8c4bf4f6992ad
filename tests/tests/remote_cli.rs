//! The CLI from another machine: `--addr https://NODE:7443 --token T --ca FILE` (or a context of
//! the client config) drives a node's agent from a separate network namespace, TLS verified
//! against the cluster CA and the token checked by the agent; a wrong token or a CA that is not
//! the cluster's is refused with a clear error and its own exit code.

use std::process::Command;

use hivemind_tests::{
    AgentOptions,
    cluster::{ClusterNode, Underlay},
    util::{hivemind_bin, run, stderr, stdout, unique},
};

/// `hivemind ARGS` run inside `netns` with `env`, and nothing of the node's socket.
fn remote(netns: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", netns])
        .arg(hivemind_bin())
        .args(args)
        .env_remove("HIVEMIND_ADDR")
        .env_remove("HIVEMIND_TOKEN");
    for (key, value) in env {
        command.env(key, value);
    }
    run(&mut command)
}

#[test]
fn a_remote_cli_works_with_the_token_and_ca_and_is_refused_otherwise() {
    let underlay = Underlay::new();
    let node = ClusterNode::start(
        &underlay,
        1,
        &unique("n"),
        &["--cluster-init"],
        &AgentOptions::default(),
    );
    let laptop = underlay.host("192.0.2.50");
    let addr = format!("https://{}", node.cluster_address());
    let token = std::fs::read_to_string(node.agent.data_dir().join("api-token"))
        .expect("the agent's API token");
    let token = token.trim();
    let ca = node.pki().join("ca.crt");
    let ca = ca.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let config_env = dir.path().join("config.toml");
    let config = config_env.to_str().expect("utf-8 path");
    let no_config = [("HIVEMIND_CONFIG", config)];

    // With the token and the cluster CA: every kind of command works.
    let base = ["--addr", addr.as_str(), "--token", token, "--ca", ca];
    let out = remote(
        laptop.name(),
        &no_config,
        &[&base[..], &["health"]].concat(),
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let out = remote(
        laptop.name(),
        &no_config,
        &[&base[..], &["volume", "create", "from-afar"]].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = node.agent.cli_ok(&["volume", "ls", "-q"]);
    assert!(listed.contains("from-afar"), "{listed}");
    let out = remote(
        laptop.name(),
        &no_config,
        &[&base[..], &["node", "ls"]].concat(),
    );
    assert!(stdout(&out).contains(node.name()), "{}", stderr(&out));

    // A named context in the client config file does the same.
    std::fs::write(
        &config_env,
        format!("context = \"lab\"\n\n[contexts.lab]\naddr = \"{addr}\"\ntoken = \"{token}\"\nca = \"{ca}\"\n"),
    )
    .expect("client config");
    let out = remote(laptop.name(), &no_config, &["volume", "ls", "-q"]);
    assert!(stdout(&out).contains("from-afar"), "{}", stderr(&out));

    // A wrong token: refused by the agent, EX_NOPERM.
    let out = remote(
        laptop.name(),
        &no_config,
        &[
            "--context",
            "lab",
            "--token",
            "not-the-token",
            "volume",
            "ls",
        ],
    );
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the token"),
        "{}",
        stderr(&out)
    );

    // A CA that is not the cluster's: the TLS handshake fails, nothing is sent.
    let other = rcgen::generate_simple_self_signed(vec!["elsewhere".to_owned()]).expect("a CA");
    let other_ca = dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, other.cert.pem()).expect("other CA");
    let out = remote(
        laptop.name(),
        &no_config,
        &[
            "--context",
            "lab",
            "--ca",
            other_ca.to_str().expect("utf-8"),
            "volume",
            "ls",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is --ca the CA of this cluster?"),
        "{}",
        stderr(&out)
    );

    // No CA at all: says what is missing.
    let out = remote(
        laptop.name(),
        &[("HIVEMIND_CONFIG", "/nonexistent")],
        &["--addr", &addr, "--token", token, "health"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pass --ca FILE"), "{}", stderr(&out));
}
