//! Private images and secrets, as an operator moving off Docker brings them: a registry with
//! TLS from a private CA and htpasswd basic auth (pull refused without the CA, refused
//! anonymously, refused with a wrong password, working after `registry login`, working
//! through a Docker `config.json` credential helper); secrets mounted as files under
//! `/run/secrets` (content, mode, owner, tmpfs) and absent from every read and from the
//! state file's bytes; and in a cluster, a node that never logged in pulling with the
//! cluster's login and mounting the cluster's secret; and a registry behind a bearer-token
//! service (Docker Hub's scheme), where the login's check and the pull go through the token.

// Each test is one scenario that reads top to bottom.
#![allow(clippy::too_many_lines)]

use std::{os::unix::fs::MetadataExt as _, path::Path, time::Duration};

use hivemind_tests::{
    AgentOptions, Registry, SingleNode, TokenServer,
    apps::{self, deploy, deploy_ok},
    cluster::{ClusterNode, UNDERLAY_PREFIX, Underlay},
    http::Client,
    image,
    util::{stderr, stdout, unique},
};

const TIMEOUT: Duration = Duration::from_secs(60);
const SECURE_ADDR: &str = "127.0.0.1:5443";
const USER: &str = "alice";
const PASSWORD: &str = "pw-5f8c1e2a-never-in-the-clear";
const SECRET_VALUE: &str = "secret-9d41b7c3-value";

/// No app, no container: what a refused deploy leaves.
fn assert_nothing_created(node: &SingleNode) {
    let apps = node.agent.cli_json(&["app", "ls"]);
    assert_eq!(apps.as_array().map(Vec::len), Some(0), "apps: {apps}");
    assert_eq!(node.containerd_containers(), Vec::<String>::new());
}

/// Whether `needle` occurs anywhere in the file's bytes.
fn file_contains(path: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    bytes
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => found.extend(files_containing(&path, needle)),
            Ok(t) if t.is_file() && file_contains(&path, needle) => {
                found.push(path.display().to_string());
            }
            _ => {}
        }
    }
    found
}

#[test]
fn private_registry_with_a_private_ca_basic_auth_login_and_a_credential_helper() {
    let mut node = SingleNode::start();
    let secure = Registry::start_secure_in(&node.netns, SECURE_ADDR, USER, PASSWORD);
    let image = secure.push_image(image::oci_layout(), "private/web:1");

    // Without the CA the registry's certificate is not trusted: a TLS error, nothing made.
    let out = deploy(&node.agent, &image, "web", &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("TLS") && err.contains(SECURE_ADDR), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_nothing_created(&node);

    // A bad --registry-ca is refused at start, naming the flag.
    let scratch = tempfile::tempdir().expect("scratch data dir");
    let bad = node.agent.cli(&[
        "agent",
        "--registry-ca",
        "no-equals-sign",
        "--data-dir",
        &scratch.path().display().to_string(),
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--registry-ca"), "{}", stderr(&bad));

    let ca = format!("{SECURE_ADDR}={}", secure.ca_path.display());
    node.agent.add_args(&["--registry-ca", &ca]);
    node.agent.restart();

    // Trusted now, but anonymous: refused, saying how to log in.
    let out = deploy(&node.agent, &image, "web", &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refused anonymous access")
            && err.contains(&format!("hivemind registry login {SECURE_ADDR}")),
        "{err}"
    );
    assert_nothing_created(&node);

    // A wrong password: refused by the registry, nothing stored.
    let login = [
        "registry",
        "login",
        SECURE_ADDR,
        "-u",
        USER,
        "--password-stdin",
    ];
    let out = node.agent.cli_stdin(&login, b"wrong-password\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refused the credentials of user alice"),
        "{err}"
    );
    assert_eq!(
        node.agent.cli_json(&["registry", "ls"]),
        serde_json::json!([])
    );

    // The right one: checked, stored, listed without the password.
    let out = node
        .agent
        .cli_stdin(&login, format!("{PASSWORD}\n").as_bytes());
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("Login Succeeded"), "{}", stdout(&out));
    let listed = node.agent.cli_json(&["registry", "ls"]);
    assert_eq!(listed[0]["host"], SECURE_ADDR, "{listed}");
    assert_eq!(listed[0]["username"], USER, "{listed}");
    assert!(!listed.to_string().contains(PASSWORD));
    assert!(!node.agent.cli_ok(&["registry", "ls"]).contains(PASSWORD));

    deploy_ok(&node.agent, &image, "web", &[]);
    apps::wait_running(&node.agent, "web", TIMEOUT);
    let store = node.agent.data_dir().join("state.redb");
    assert!(
        !file_contains(&store, PASSWORD),
        "the password is in the clear in {}",
        store.display()
    );
    assert!(
        !node.agent.log().contains(PASSWORD),
        "the password is in the agent log"
    );

    // Logged out, a pull that must ask the registry again is refused.
    node.agent.cli_ok(&["registry", "logout", SECURE_ADDR]);
    let out = deploy(&node.agent, &image, "web2", &["--pull"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused anonymous access"),
        "{}",
        stderr(&out)
    );

    // A Docker config.json whose credential helper (a real `docker-credential-*` program
    // speaking the helper protocol: the server on stdin, JSON on stdout) has the password.
    let helpers = tempfile::tempdir().expect("helper dir");
    let called = helpers.path().join("called");
    let helper = helpers.path().join("docker-credential-hmtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> {called}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n",
            called = called.display()
        ),
    )
    .expect("write helper");
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod helper");
    let config = helpers.path().join("config.json");
    std::fs::write(
        &config,
        format!(r#"{{"credHelpers":{{"{SECURE_ADDR}":"hmtest"}}}}"#),
    )
    .expect("write config.json");
    let path = format!(
        "{}:{}",
        helpers.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    node.agent.set_env("PATH", Some(&path));
    node.agent
        .add_args(&["--registry-config", &config.display().to_string()]);
    node.agent.restart();
    deploy_ok(&node.agent, &image, "web2", &["--pull"]);
    apps::wait_running(&node.agent, "web2", TIMEOUT);
    let asked = std::fs::read_to_string(&called).expect("the helper was run");
    assert!(asked.contains(SECURE_ADDR), "{asked}");
}

#[test]
fn secrets_are_files_for_the_container_and_nowhere_else() {
    let node = SingleNode::start();
    let agent = &node.agent;

    let out = agent.cli_stdin(&["secret", "create", "db-pass"], SECRET_VALUE.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let again = agent.cli_stdin(&["secret", "create", "db-pass"], b"other");
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let empty = agent.cli_stdin(&["secret", "create", "empty"], b"");
    assert!(!empty.status.success());
    assert!(stderr(&empty).contains("empty"), "{}", stderr(&empty));

    // An unknown secret: refused, naming it, nothing created.
    let out = deploy(agent, &node.image, "api", &["--secret", "nope"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("secret nope does not exist"),
        "{}",
        stderr(&out)
    );
    assert_nothing_created(&node);

    deploy_ok(
        agent,
        &node.image,
        "api",
        &[
            "--secret",
            "db-pass",
            "--secret",
            "db-pass:alt.conf",
            "--user",
            "1234:2345",
            "--env",
            "DATABASE_URL=postgres://u:pw-in-url@db/x",
            // uid 1234 may not bind port 80.
            "--env",
            "PORT=8080",
        ],
    );
    let container = apps::wait_running(agent, "api", TIMEOUT);
    let id = apps::id(&container);
    let pid = container["pid"].as_u64().expect("pid");
    let root = format!("/proc/{pid}/root/run/secrets");
    for file in ["db-pass", "alt.conf"] {
        let path = format!("{root}/{file}");
        assert_eq!(
            std::fs::read_to_string(&path).expect("secret file"),
            SECRET_VALUE
        );
        let meta = std::fs::metadata(&path).expect("metadata");
        assert_eq!(meta.mode() & 0o777, 0o400, "{path}");
        assert_eq!((meta.uid(), meta.gid()), (1234, 2345), "{path}");
    }
    // The process itself (uid 1234) reads it; it cannot write it.
    let read = apps::exec(&node.containerd, &id, "cat /run/secrets/db-pass");
    assert_eq!(stdout(&read), SECRET_VALUE, "{}", stderr(&read));
    let write = apps::exec(&node.containerd, &id, "echo x > /run/secrets/db-pass");
    assert!(!write.status.success());
    // On a tmpfs, never on a disk.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/run/secrets/db-pass"))
        .unwrap_or_else(|| panic!("no mount at /run/secrets/db-pass:\n{mountinfo}"));
    assert!(line.contains(" - tmpfs "), "{line}");
    // Not in the environment.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(!String::from_utf8_lossy(&environ).contains(SECRET_VALUE));

    // Nowhere a person or a copy of the state could read it.
    let info = agent.cli_ok(&["app", "container-info", "--container-id", &id]);
    let inspect = agent.cli_ok(&["app", "inspect", "api", "-o", "json"]);
    let listed = agent.cli_ok(&["secret", "ls"]);
    assert!(
        listed.contains("db-pass") && listed.contains("api"),
        "{listed}"
    );
    // `-q`: names (ids) only, for scripts.
    assert_eq!(agent.cli_ok(&["secret", "ls", "-q"]), "db-pass\n");
    assert_eq!(agent.cli_ok(&["-q", "app", "ls"]), "api\n");
    assert_eq!(
        agent.cli_ok(&["app", "containers", "-q"]),
        format!("{id}\n")
    );
    let rest = Client::loopback(&node.netns);
    let reads = [
        rest.get("/api/apps").body,
        rest.get("/api/apps/api/spec").body,
        rest.get("/api/containers").body,
        rest.get(&format!("/api/containers/{id}")).body,
        rest.get("/").body,
    ];
    for (what, text) in [
        ("container-info", &info),
        ("app inspect", &inspect),
        ("secret ls", &listed),
    ]
    .into_iter()
    .chain(reads.iter().map(|body| ("REST", body)))
    {
        assert!(
            !text.contains(SECRET_VALUE),
            "{what} shows the secret:\n{text}"
        );
        assert!(
            !text.contains("pw-in-url"),
            "{what} shows the URL's password:\n{text}"
        );
    }
    assert!(inspect.contains("db-pass:alt.conf"), "{inspect}");
    assert!(
        !agent.log().contains(SECRET_VALUE),
        "the agent log has the secret"
    );
    let data = agent.data_dir();
    let leaks: Vec<String> = files_containing(&data, SECRET_VALUE)
        .into_iter()
        .filter(|f| !f.contains("/secrets/"))
        .collect();
    assert!(leaks.is_empty(), "plaintext secret in {leaks:?}");
    let store = data.join("state.redb");
    assert!(!file_contains(&store, SECRET_VALUE));
    let key = std::fs::metadata(data.join("seal.key")).expect("seal.key");
    assert_eq!(key.mode() & 0o777, 0o600);

    // In use: refused, naming the app.
    let out = agent.cli(&["secret", "rm", "db-pass"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("in use by app api"),
        "{}",
        stderr(&out)
    );

    // An update that drops one file keeps the other.
    agent.cli_ok(&["app", "update", "api", "--secret-rm", "alt.conf"]);
    let replaced = apps::wait_for_new_container(agent, "api", &id, TIMEOUT);
    let pid = replaced["pid"].as_u64().expect("pid");
    assert!(Path::new(&format!("/proc/{pid}/root/run/secrets/db-pass")).exists());
    assert!(!Path::new(&format!("/proc/{pid}/root/run/secrets/alt.conf")).exists());

    // Removing the app unmounts the tmpfs; then the secret may go.
    agent.cli_ok(&["app", "rm", "--name", "api"]);
    let containers_dir = data.join("containers");
    assert!(
        hivemind_tests::util::mounts_under(&containers_dir).is_empty(),
        "{:?}",
        hivemind_tests::util::mounts_under(&containers_dir)
    );
    agent.cli_ok(&["secret", "rm", "db-pass"]);
    assert_eq!(agent.cli_json(&["secret", "ls"]), serde_json::json!([]));
}

#[test]
fn a_node_that_never_logged_in_pulls_and_mounts_with_the_clusters_login_and_secret() {
    let underlay = Underlay::new();
    let ip1 = format!("{UNDERLAY_PREFIX}11");
    let netns1 = underlay.host(&ip1);
    let addr = format!("{ip1}:5443");
    let secure = Registry::start_secure_in(&netns1, &addr, USER, PASSWORD);
    let image = secure.push_image(image::oci_layout(), "private/web:1");
    let ca = format!("{addr}={}", secure.ca_path.display());
    let options = AgentOptions::default();
    let n1 = ClusterNode::start_in(
        netns1,
        &ip1,
        &unique("n"),
        &["--cluster-init", "--registry-ca", &ca],
        &options,
    );
    let n2 = ClusterNode::start(
        &underlay,
        2,
        &unique("n"),
        &["--registry-ca", &ca],
        &options,
    );
    let token = n1.token();
    n2.agent
        .cli_ok(&["join", "--host", &n1.ip, "--token", &token]);
    n1.wait_ready(n2.name(), true, Duration::from_secs(90));

    let login = ["registry", "login", &addr, "-u", USER, "--password-stdin"];
    let out = n1.agent.cli_stdin(&login, PASSWORD.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = n1
        .agent
        .cli_stdin(&["secret", "create", "token"], SECRET_VALUE.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    // n2 sees the login (the joiner took the cluster's key at join).
    assert_eq!(n2.agent.cli_json(&["registry", "ls"])[0]["host"], addr);

    deploy_ok(
        &n1.agent,
        &image,
        "web",
        &["--replicas", "2", "--secret", "token"],
    );
    let running = hivemind_tests::util::wait_for("a replica on each node", TIMEOUT, || {
        let all = apps::containers(&n1.agent, "web");
        let nodes: std::collections::BTreeSet<String> = all
            .iter()
            .filter(|c| c["state"] == "running")
            .filter_map(|c| c["node"].as_str().map(str::to_owned))
            .collect();
        (nodes.len() == 2).then_some(all)
    });
    for (node, containerd) in [(&n1, &n1.containerd), (&n2, &n2.containerd)] {
        let container = running
            .iter()
            .find(|c| c["node"] == node.name())
            .expect("a replica here");
        let read = apps::exec(containerd, &apps::id(container), "cat /run/secrets/token");
        assert_eq!(
            stdout(&read),
            SECRET_VALUE,
            "on {}: {}",
            node.name(),
            stderr(&read)
        );
    }
    // etcd's database holds neither in the clear.
    for node in [&n1, &n2] {
        let etcd = node.agent.data_dir().join("etcd");
        for needle in [PASSWORD, SECRET_VALUE] {
            let found = files_containing(&etcd, needle);
            assert!(found.is_empty(), "{needle} in the clear in {found:?}");
        }
    }
}

#[test]
fn a_token_registry_takes_the_login_and_refuses_wrong_credentials() {
    let node = SingleNode::start();
    let tokens = TokenServer::start_in(&node.netns, "127.0.0.1:5081", USER, PASSWORD);
    let registry = Registry::start_token_in(&node.netns, "127.0.0.1:5446", &tokens);
    let image = registry.push_image_with(
        image::oci_layout(),
        "private/api:1",
        &["--dest-creds", &format!("{USER}:{PASSWORD}")],
    );

    // The token service refuses anonymous access: so does the pull.
    let out = deploy(&node.agent, &image, "api", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused anonymous access"),
        "{}",
        stderr(&out)
    );
    assert_nothing_created(&node);

    let login = [
        "registry",
        "login",
        "127.0.0.1:5446",
        "-u",
        USER,
        "--password-stdin",
    ];
    let out = node.agent.cli_stdin(&login, b"not-it");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused the credentials of user alice"),
        "{}",
        stderr(&out)
    );
    let out = node.agent.cli_stdin(&login, PASSWORD.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));

    deploy_ok(&node.agent, &image, "api", &[]);
    apps::wait_running(&node.agent, "api", TIMEOUT);
}
