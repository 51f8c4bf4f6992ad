//! `hivemind stack deploy -c docker-compose.yml NAME`: a Compose file of three services (a web
//! front, an api, a db-like service with a named volume, a secret and an env file) comes up as
//! apps `NAME-SERVICE`, whose containers reach each other by their Compose service names;
//! `stack rm` removes everything the stack made and nothing else; a key Hivemind cannot honour
//! is an error naming it and its line.

use std::time::Duration;

use hivemind_tests::{
    SingleNode,
    apps::{self, deploy_ok},
    util::{stderr, stdout, wait_for},
};

const TIMEOUT: Duration = Duration::from_secs(90);

/// In the shape of the well-known voting-app and blog examples: a front on a published
/// port, an internal api, a stateful service with a volume and a password secret.
fn compose(image: &str) -> String {
    format!(
        r#"version: "3.8"

x-defaults: &defaults
  image: {image}
  stop_grace_period: 5s

services:
  web:
    <<: *defaults
    ports:
      - "8088:80"
    environment:
      API_URL: http://api/
      WORKERS: 2
    depends_on:
      - api
    deploy:
      replicas: 2
      update_config:
        parallelism: 1
        delay: 10s
      resources:
        limits:
          memory: 64M
          cpus: "0.5"
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1/ || exit 1"]
      interval: 1s
      timeout: 500ms
      retries: 3

  api:
    <<: *defaults
    labels:
      tier: backend
    restart: always

  db:
    image: {image}
    env_file: db.env
    volumes:
      - db-data:/var/lib/db
    secrets:
      - db_password
    environment:
      - DB_PASSWORD_FILE=/run/secrets/db_password

volumes:
  db-data:

secrets:
  db_password:
    file: ./db_password.txt
"#
    )
}

#[test]
#[allow(clippy::too_many_lines)] // one operator's story, step by step
fn a_compose_stack_comes_up_talks_by_service_name_and_goes_away_whole() {
    let node = SingleNode::start();
    let agent = &node.agent;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, compose(&node.image)).expect("compose file");
    std::fs::write(
        dir.path().join("db.env"),
        "# the db's settings\nDB_NAME=shop\nDB_USER='admin'\n",
    )
    .expect("env file");
    std::fs::write(dir.path().join("db_password.txt"), "hunter2").expect("secret file");
    let file_arg = file.to_str().expect("utf-8 path");

    // Things outside the stack, which `stack rm` must leave.
    deploy_ok(agent, &node.image, "other", &[]);
    agent.cli_ok(&["volume", "create", "keep"]);

    let out = agent.cli(&["stack", "deploy", "-c", file_arg, "shop"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let (printed, warnings) = (stdout(&out), stderr(&out));
    for line in [
        "+ volume shop-db-data",
        "+ secret shop-db-password",
        "+ app shop-web (",
        "+ app shop-api (",
        "+ app shop-db (",
    ] {
        assert!(printed.contains(line), "missing {line:?} in:\n{printed}");
    }
    for ignored in [
        "`services.web.depends_on` ignored",
        "`services.api.restart` ignored",
        "`services.web.deploy.update_config.delay` ignored",
        "`version` ignored",
    ] {
        assert!(
            warnings.contains(ignored),
            "missing {ignored:?} in:\n{warnings}"
        );
    }

    let web = apps::wait_healthy(agent, "shop-web", 2, TIMEOUT);
    let api = apps::wait_running(agent, "shop-api", TIMEOUT);
    let db = apps::wait_running(agent, "shop-db", TIMEOUT);
    let web_id = apps::id(&web[0]);

    // web reaches api by its Compose name, as in a swarm.
    let api_ip = apps::ip(&api);
    wait_for("web resolves api to the api replica", TIMEOUT, || {
        let out = apps::exec(&node.containerd, &web_id, "nslookup api");
        stdout(&out)
            .contains(&format!("Address: {api_ip}"))
            .then_some(())
    });
    let out = apps::exec(&node.containerd, &web_id, "wget -q -O - http://api/");
    assert!(
        stdout(&out).contains("hivemind test image"),
        "{}",
        stderr(&out)
    );
    // ... and its full name too.
    let out = apps::exec(&node.containerd, &web_id, "nslookup db.shop.hivemind");
    assert!(out.status.success(), "{}", stdout(&out));

    // db: env file, environment, the secret, the volume.
    let db_id = apps::id(&db);
    let out = apps::exec(
        &node.containerd,
        &db_id,
        "echo $DB_NAME $DB_USER; cat $DB_PASSWORD_FILE; echo; grep /var/lib/db /proc/mounts | wc -l",
    );
    assert_eq!(
        stdout(&out).trim(),
        "shop admin\nhunter2\n1",
        "{}",
        stderr(&out)
    );
    let inspect = agent.cli_json(&["app", "inspect", "shop-web"]);
    assert_eq!(inspect["replicas"], 2, "{inspect}");
    assert_eq!(inspect["labels"]["hivemind.stack"], "shop", "{inspect}");

    // Deploying it again changes nothing.
    let again = agent.cli_ok(&["stack", "deploy", "-c", file_arg, "shop"]);
    assert!(again.contains("unchanged: all 5 resources"), "{again}");
    let listed = agent.cli_ok(&["stack", "ls"]);
    assert!(
        listed.contains("shop") && listed.contains("shop-web"),
        "{listed}"
    );

    // An unsupported key: refused with its line, nothing changed.
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        compose(&node.image).replace(
            "    restart: always\n",
            "    restart: always\n    configs: [app_config]\n",
        ),
    )
    .expect("bad compose file");
    let out = agent.cli(&[
        "stack",
        "deploy",
        "-c",
        bad.to_str().expect("utf-8"),
        "shop",
    ]);
    assert!(!out.status.success());
    let line = compose(&node.image)
        .lines()
        .position(|l| l == "    restart: always")
        .expect("restart line")
        + 2;
    assert!(
        stderr(&out).contains(&format!(
            "bad.yml:{line}: `services.api.configs` is not supported"
        )),
        "{}",
        stderr(&out)
    );

    // stack rm: everything the stack made, and nothing else.
    let out = agent.cli_ok(&["stack", "rm", "shop"]);
    assert!(out.contains("5 removed"), "{out}");
    for app in ["shop-web", "shop-api", "shop-db"] {
        assert!(
            !agent.cli(&["app", "inspect", app]).status.success(),
            "{app} left"
        );
    }
    let volumes = agent.cli_ok(&["volume", "ls", "-q"]);
    assert!(
        volumes.contains("keep") && !volumes.contains("shop-db-data"),
        "{volumes}"
    );
    assert!(
        !agent
            .cli_ok(&["secret", "ls", "-q"])
            .contains("shop-db-password")
    );
    assert_eq!(apps::containers(agent, "other").len(), 1);
    assert!(!agent.cli_ok(&["stack", "ls", "-q"]).contains("shop"));
    let gone = agent.cli(&["stack", "rm", "shop"]);
    assert!(
        stderr(&gone).contains("no stack named shop"),
        "{}",
        stderr(&gone)
    );
}
