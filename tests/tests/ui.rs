//! The web UI in headless Debian Chromium, driven by playwright-core (`tests/browser/ui.mjs`)
//! inside the agent's namespace: deploy from the form, scale to 3, edit (an env var, a secret by
//! name, whose value the page never holds), create a volume, apply a
//! policy, every page — and the results checked through the API and containerd. Screenshots
//! of each page go to `tests/artifacts/ui/`.

use std::path::Path;

use hivemind_tests::{
    SingleNode,
    http::Client,
    util::{run, wait_for, workspace},
};
use serde_json::Value;

// One scenario that reads top to bottom.
#[allow(clippy::too_many_lines)]
#[test]
fn ui_deploy_scale_volume_in_chromium() {
    let browser_dir = workspace().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run `cargo xtask setup`",
        browser_dir.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed: run `cargo xtask setup`"
    );
    let node = SingleNode::start();
    // A secret the edit page mounts: the page shows its name, never its value.
    let secret_value = "ui-secret-7c2e-value";
    let made = node
        .agent
        .cli_stdin(&["secret", "create", "ui-secret"], secret_value.as_bytes());
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let artifacts = workspace().join("tests/artifacts/ui");
    let _ = std::fs::remove_dir_all(&artifacts);

    let mut command = node.netns.command("node");
    command
        .arg(browser_dir.join("ui.mjs"))
        .current_dir(&browser_dir)
        .env("BASE_URL", "http://127.0.0.1:3000")
        .env("IMAGE", &node.image)
        .env("APP", "web-ui")
        .env("SECRET", "ui-secret")
        .env("SECRET_VALUE", secret_value)
        .env("ARTIFACTS", &artifacts);
    let out = run(&mut command);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed ({}); screenshots in {}\nstdout: {stdout}\nstderr: {}\nagent log:\n{}",
        out.status,
        artifacts.display(),
        String::from_utf8_lossy(&out.stderr),
        node.agent.log()
    );
    let seen: Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no result line from the browser test: {stdout}"));
    assert_eq!(seen["scaled"], 3, "{seen}");
    assert_eq!(seen["edited"], true, "{seen}");
    assert_eq!(seen["pageHasSecretValue"], false, "{seen}");
    assert_eq!(seen["phoneOverflow"], 0, "{seen}");

    // What the browser did is real: three running containers (API and containerd), the volume,
    // the policy; the removal was cancelled.
    let api = Client::loopback(&node.netns);
    let app = api.get_json("/api/apps/web-ui");
    assert_eq!(app["replicas"], 3, "{app}");
    assert_eq!(app["service"], "web-ui.example.com");
    assert_eq!(app["labels"]["tier"], "front");
    assert_eq!(app["secrets"], serde_json::json!(["ui-secret"]), "{app}");
    // The edit added one variable and kept the rest, through containerd's own spec too.
    let env: Vec<&str> = app["env"]
        .as_array()
        .map(|e| e.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(env, ["EXTRA=from-the-edit", "MESSAGE=from-the-ui"], "{app}");
    let ids = wait_for(
        "3 running containers",
        std::time::Duration::from_secs(30),
        || {
            let list = api.get_json("/api/containers?app=web-ui");
            let ids: Vec<String> = list
                .as_array()?
                .iter()
                .filter(|c| c["state"] == "running")
                .filter_map(|c| c["id"].as_str().map(str::to_owned))
                .collect();
            (ids.len() == 3).then_some(ids)
        },
    );
    let tasks = node.running_tasks();
    assert!(
        ids.iter().all(|id| tasks.contains(id)),
        "{ids:?} vs {tasks:?}"
    );
    assert_eq!(api.get_json("/api/volumes")[0]["name"], "ui-data");
    assert_eq!(api.get_json("/api/policies")[0]["name"], "web-from-lan");
    for name in [
        "01-apps-empty",
        "03-deploy-form",
        "04-app-running",
        "05-app-scaled",
        "05b-app-edit",
        "06-container",
        "07-containers",
        "08-volumes",
        "09-policies",
        "10-policy",
        "11-health",
        "14-phone-apps",
    ] {
        let shot = artifacts.join(format!("{name}.png"));
        assert!(
            std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
            "no screenshot {}",
            shot.display()
        );
    }
}
