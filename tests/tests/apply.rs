//! `hivemind apply -f` and `hivemind get`: a set of documents made true all or nothing,
//! re-applied without change, changed with a rollout of only what changed, planned with
//! `--dry-run`, pruned, and read back as the same documents. Checked through the CLI and,
//! for "nothing changed", through containerd's own `ctr`.

use std::{fmt::Write as _, time::Duration};

use hivemind_tests::{
    SingleNode,
    apps::{self, deploy_ok},
    util::{stderr, stdout},
};

const TIMEOUT: Duration = Duration::from_secs(90);
const NS: &str = "hivemind";

fn manifest(image: &str, web_env: &str, with_api: bool) -> String {
    let mut text = format!(
        "\
apiVersion: hivemind/v1
kind: Volume
metadata:
  name: web-data
---
apiVersion: hivemind/v1
kind: Secret
metadata:
  name: web-token
spec:
  valueFrom:
    file: token.txt
---
apiVersion: hivemind/v1
kind: App
metadata:
  name: web
  labels:
    tier: front
spec:
  image: {image}
  replicas: 2
  env:
    MODE: {web_env}
    PORT: 80
  ports: [\"8080:80\"]
  volumes: [\"web-data:/data\"]
  secrets: [\"web-token:token\"]
  stopTimeout: 5s
  healthCheck:
    http: 80/
    interval: 1s
    timeout: 500ms
    retries: 2
"
    );
    if with_api {
        let _ = write!(
            text,
            "\
---
apiVersion: hivemind/v1
kind: App
metadata:
  name: api
spec:
  image: {image}
---
apiVersion: hivemind/v1
kind: NetworkPolicy
metadata:
  name: api-from-web
spec:
  selector: {{app: api}}
  ingress:
    - from: [{{app: web}}]
"
        );
    }
    text
}

fn ctr_containers(node: &SingleNode) -> Vec<String> {
    let mut ids = node.containerd.containers(NS);
    ids.sort();
    ids
}

fn ids(node: &SingleNode, app: &str) -> Vec<String> {
    let mut ids: Vec<String> = apps::containers(&node.agent, app)
        .iter()
        .map(apps::id)
        .collect();
    ids.sort();
    ids
}

#[test]
#[allow(clippy::too_many_lines)] // one operator's story, step by step
fn apply_creates_reapplies_changes_plans_prunes_and_round_trips() {
    let node = SingleNode::start();
    let agent = &node.agent;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token.txt"), "s3cret").expect("token");
    let file = dir.path().join("app.yaml");
    let file_arg = file.to_str().expect("utf-8 path");
    std::fs::write(&file, manifest(&node.image, "blue", true)).expect("manifest");

    // An app outside the files, which nothing below may touch.
    deploy_ok(agent, &node.image, "other", &[]);
    let other = ids(&node, "other");

    // Create.
    let out = agent.cli_ok(&["apply", "-f", file_arg]);
    for line in [
        "+ volume web-data",
        "+ secret web-token",
        "+ policy api-from-web",
        "+ app web (",
        "+ app api (",
        "applied: 5 created, 0 changed, 0 removed",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    apps::wait_healthy(agent, "web", 2, TIMEOUT);
    apps::wait_running(agent, "api", TIMEOUT);
    let web = ids(&node, "web");
    let api = ids(&node, "api");
    let token = apps::exec(&node.containerd, &web[0], "cat /run/secrets/token");
    assert_eq!(stdout(&token), "s3cret", "{}", stderr(&token));
    let info = agent.cli_json(&["app", "inspect", "web"]);
    assert_eq!(info["labels"]["tier"], "front", "{info}");

    // Re-apply: nothing changes, and it says so.
    let before = ctr_containers(&node);
    let out = agent.cli_ok(&["apply", "-f", file_arg]);
    assert!(out.contains("unchanged: all 5 resources"), "{out}");
    assert_eq!(ctr_containers(&node), before);

    // Dry run of a change: the plan, and nothing done.
    std::fs::write(&file, manifest(&node.image, "green", true)).expect("manifest");
    let out = agent.cli_ok(&["apply", "-f", file_arg, "--dry-run"]);
    assert!(out.contains("~ app web: env ~MODE"), "{out}");
    assert!(
        out.contains("plan: 0 to create, 1 to change, 0 to remove, 4 unchanged"),
        "{out}"
    );
    assert!(
        !out.contains("blue") && !out.contains("green"),
        "env values shown: {out}"
    );
    assert_eq!(ctr_containers(&node), before);
    assert_eq!(ids(&node, "web"), web);

    // The change: web rolled out (every replica replaced), api and other untouched.
    let out = agent.cli_ok(&["apply", "-f", file_arg]);
    assert!(out.contains("applied: 0 created, 1 changed"), "{out}");
    let new_web = ids(&node, "web");
    assert_eq!(new_web.len(), 2);
    assert!(
        new_web.iter().all(|id| !web.contains(id)),
        "{web:?} -> {new_web:?}"
    );
    assert_eq!(ids(&node, "api"), api);
    assert_eq!(ids(&node, "other"), other);
    let env = apps::exec(&node.containerd, &new_web[0], "echo $MODE");
    assert_eq!(stdout(&env).trim(), "green");

    // One bad document: nothing applied, every problem named with its line.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "{}---\napiVersion: hivemind/v1\nkind: App\nmetadata: {{name: extra}}\nspec:\n  image: {}\n  replica: 3\n",
            manifest(&node.image, "red", true),
            node.image
        ),
    )
    .expect("bad manifest");
    let before = ctr_containers(&node);
    let out = agent.cli(&["apply", "-f", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("nothing applied"), "{err}");
    assert!(err.contains("bad.yaml:"), "{err}");
    assert!(
        err.contains("unknown field `replica` (did you mean `replicas`?)"),
        "{err}"
    );
    assert_eq!(ctr_containers(&node), before);
    assert!(!agent.cli(&["app", "inspect", "extra"]).status.success());
    let env = apps::exec(&node.containerd, &new_web[0], "echo $MODE");
    assert_eq!(stdout(&env).trim(), "green", "the valid part was applied");

    // A reference to a volume nobody has: refused at the plan, the other documents untouched.
    std::fs::write(
        &bad,
        manifest(&node.image, "green", true).replace("web-data:/data", "nope:/data"),
    )
    .expect("bad manifest");
    let out = agent.cli(&["apply", "-f", bad.to_str().expect("utf-8")]);
    assert!(
        stderr(&out).contains("volume nope does not exist"),
        "{}",
        stderr(&out)
    );

    // get -o yaml | apply -f -: the same documents, so nothing to change.
    let yaml = agent.cli_ok(&["get", "apps", "-o", "yaml", "--set", "default"]);
    assert!(
        yaml.contains("name: web") && yaml.contains("name: api"),
        "{yaml}"
    );
    assert!(!yaml.contains("name: other"), "--set filters: {yaml}");
    let all = agent.cli_ok(&["get", "all"]);
    let out = agent.cli_stdin(&["apply", "-f", "-", "--dry-run"], yaml.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("unchanged: all 2 resources"),
        "{}\n{yaml}",
        stdout(&out)
    );
    let out = agent.cli_stdin(
        &["apply", "-f", "-", "--dry-run", "--set", "copy"],
        all.as_bytes(),
    );
    assert!(
        stderr(&out).contains("app web belongs to the apply set named default"),
        "{}",
        stderr(&out)
    );

    // --prune: api and its policy leave the files, so they go; the rest stays.
    std::fs::write(&file, manifest(&node.image, "green", false)).expect("manifest");
    let out = agent.cli_ok(&["apply", "-f", file_arg, "--prune", "--dry-run"]);
    assert!(
        out.contains("- app api") && out.contains("- policy api-from-web"),
        "{out}"
    );
    assert_eq!(ids(&node, "api"), api);
    let out = agent.cli_ok(&["apply", "-f", file_arg, "--prune"]);
    assert!(out.contains("0 created, 0 changed, 2 removed"), "{out}");
    assert!(!agent.cli(&["app", "inspect", "api"]).status.success());
    let policies = agent.cli_ok(&["policy", "ls", "-q"]);
    assert!(!policies.contains("api-from-web"), "{policies}");
    assert_eq!(ids(&node, "web"), new_web);
    assert_eq!(ids(&node, "other"), other);
}
