//! `cargo xtask up` / `down`: a working single-node Hivemind on this machine.

use std::{
    fs,
    io::Read as _,
    net::TcpStream,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd, setup};

const DATA_DIR: &str = "/var/lib/hivemind";
const RUN_DIR: &str = "/run/hivemind";
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
const API: &str = "127.0.0.1:3000";
const INSTALLED_BINARY: &str = "/usr/local/bin/hivemind";

fn agent_pid_file() -> PathBuf {
    Path::new(RUN_DIR).join("agent.pid")
}

fn containerd_pid_file() -> PathBuf {
    Path::new(RUN_DIR).join("containerd.pid")
}

pub fn up() -> anyhow::Result<()> {
    setup::ensure()?;
    cmd::cargo_host(&["build", "--release", "--package", "hivemind-agent"]).run()?;
    install_binary()?;
    fs::create_dir_all(DATA_DIR).with_context(|| format!("creating {DATA_DIR}"))?;
    fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    ensure_containerd()?;

    if let Some(pid) = running_pid(&agent_pid_file()) {
        println!("up: stopping the running agent (pid {pid}) to start the new build");
        stop(&agent_pid_file(), "agent")?;
    }
    let log = Path::new(DATA_DIR).join("agent.log");
    let http = router_addr();
    let pid = spawn_detached(
        Command::new(INSTALLED_BINARY).args([
            "agent",
            "--data-dir",
            DATA_DIR,
            "--api-addr",
            API,
            "--http-addr",
            &http,
        ]),
        &log,
    )?;
    fs::write(agent_pid_file(), pid.to_string())?;
    wait_until("the agent's API", Duration::from_secs(30), || {
        http_get_ok(API, "/api/health")
    })
    .with_context(|| format!("the agent did not come up; see {}", log.display()))?;

    println!(
        "\nHivemind is running (agent pid {pid}).\n\
         \n  web UI and REST API   http://{API}/\n\
         \x20 public HTTP router    http://{http}/ (routes by Host: <app>.hivemind or --service domains)\n\
         \n  CLI                   hivemind health\n\
         \x20                       hivemind app deploy --image REGISTRY/IMAGE:TAG --name NAME\n\
         \n  agent log             {}\n\
         \x20 state                 {DATA_DIR}\n\
         \n  stop it with          cargo xtask down\n",
        log.display()
    );
    Ok(())
}

/// The public HTTP router's address: port 80 on every address, as on a server, unless
/// something on this machine already has port 80 (then 127.0.0.1:8080, said at start).
fn router_addr() -> String {
    if std::net::TcpListener::bind("0.0.0.0:80").is_ok() {
        "0.0.0.0:80".to_owned()
    } else {
        println!("up: port 80 is taken on this machine; the HTTP router listens on 127.0.0.1:8080");
        "127.0.0.1:8080".to_owned()
    }
}

pub fn down() -> anyhow::Result<()> {
    stop(&agent_pid_file(), "agent")?;
    stop(&containerd_pid_file(), "containerd")?;
    Ok(())
}

/// Copies the release binary to /usr/local/bin so `hivemind ...` works from any shell.
/// Written beside and renamed over, because the running agent keeps the old file busy.
fn install_binary() -> anyhow::Result<()> {
    let built = cmd::root().join("target/release/hivemind");
    let staged = PathBuf::from(format!("{INSTALLED_BINARY}.new"));
    fs::copy(&built, &staged).with_context(|| format!("copying {}", built.display()))?;
    fs::rename(&staged, INSTALLED_BINARY)
        .with_context(|| format!("installing {INSTALLED_BINARY}"))?;
    println!("up: installed {INSTALLED_BINARY}");
    Ok(())
}

/// Uses the machine's containerd if one answers; otherwise starts one with its config in the
/// data dir, on the standard socket so `ctr` works without flags.
fn ensure_containerd() -> anyhow::Result<()> {
    if UnixStream::connect(CONTAINERD_SOCKET).is_ok() {
        println!("up: using the running containerd at {CONTAINERD_SOCKET}");
        return Ok(());
    }
    let dir = Path::new(DATA_DIR).join("containerd");
    fs::create_dir_all(&dir)?;
    let config = dir.join("config.toml");
    fs::write(
        &config,
        format!(
            "# Written by `cargo xtask up`: containerd for a single-node Hivemind.\n\
             version = 2\n\
             root = \"/var/lib/containerd\"\n\
             state = \"/run/containerd\"\n\
             # Hivemind talks to containerd directly; Kubernetes' CRI plugin is not needed.\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{CONTAINERD_SOCKET}\"\n"
        ),
    )?;
    let log = dir.join("containerd.log");
    let pid = spawn_detached(
        Command::new("containerd").arg("--config").arg(&config),
        &log,
    )?;
    fs::write(containerd_pid_file(), pid.to_string())?;
    wait_until("containerd", Duration::from_secs(20), || {
        UnixStream::connect(CONTAINERD_SOCKET).is_ok()
    })
    .with_context(|| format!("containerd did not start; see {}", log.display()))?;
    println!(
        "up: started containerd (pid {pid}), config {}",
        config.display()
    );
    Ok(())
}

/// Starts `command` in its own session (it outlives this process and the terminal), with
/// stdin closed and output appended to `log`.
fn spawn_detached(command: &mut Command, log: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt as _;
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    Ok(child.id())
}

fn running_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// SIGTERM, up to 20 s of grace, then SIGKILL.
fn stop(pid_file: &Path, what: &str) -> anyhow::Result<()> {
    let Some(pid) = running_pid(pid_file) else {
        let _ = fs::remove_file(pid_file);
        return Ok(());
    };
    cmd::Cmd::new("kill")
        .args(["-TERM", &pid.to_string()])
        .run()?;
    let gone = wait_until(what, Duration::from_secs(20), || {
        !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid)
    });
    if gone.is_err() {
        cmd::Cmd::new("kill")
            .args(["-KILL", &pid.to_string()])
            .run()?;
    }
    let _ = fs::remove_file(pid_file);
    println!("down: stopped {what} (pid {pid})");
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        sleep(Duration::from_millis(100));
    }
    bail!("{what} not ready after {timeout:?}")
}

/// A minimal HTTP/1.0 GET: xtask stays dependency-free so it builds on any stable.
fn http_get_ok(addr: &str, path: &str) -> bool {
    use std::io::Write as _;
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}
