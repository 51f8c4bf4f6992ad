//! `cargo xtask setup`: everything a fresh Debian 12 machine lacks, installed idempotently.
//! Each step checks first and does nothing when already satisfied, so a second run is a no-op.

use std::{fs, path::Path};

use anyhow::{Context as _, bail};

use crate::{cmd::Cmd, toolchain};

/// Debian packages the build, the agent and the tests need.
const APT_PACKAGES: &[&str] = &[
    // build
    "protobuf-compiler", // containerd-client's and the agent's build scripts run protoc
    "libprotobuf-dev", // protoc's well-known types (descriptor.proto), which etcd-client's protos import
    // runtime
    "containerd",
    "runc",
    "iproute2",
    "etcd-server",
    // tests: registry, image, network tools
    "docker-registry",
    "groff-base",    // the man-page test renders what `hivemind man` writes
    "apache2-utils", // htpasswd: bcrypt users for the registry with basic auth
    "skopeo",
    "busybox-static",
    "iputils-ping",
    "tcpdump",
    "iperf3",
    "dnsutils",
    "bpftool",
    "iptables",
    "nftables",
    "curl",
    "wget",    // service tests: a name lookup through a container's resolv.conf
    "python3", // service tests: a stand-in upstream resolver; the API fuzz run's venv
    "jq",
    "socat",
    // web UI tests (driven by playwright-core from npm; never a downloaded browser)
    "chromium",
    // load generators of the API and service benchmarks
    "wrk",
    "dnsperf",
];

/// Other containerd releases, unpacked (not installed) for the image-pull compatibility test:
/// (Debian suite that has it, directory under [`OTHER_CONTAINERD_DIR`]).
const OTHER_CONTAINERD: &[(&str, &str)] = &[("trixie", "1.7"), ("sid", "2")];
/// Where they go; `tests/src/containerd.rs` looks there too.
const OTHER_CONTAINERD_DIR: &str = "/opt/hivemind/containerd";

pub fn run() -> anyhow::Result<()> {
    apt()?;
    rust_toolchains()?;
    bpf_linker()?;
    other_containerd();
    browser_tests()?;
    schemathesis()?;
    println!("setup: ok");
    Ok(())
}

/// The quick check other tasks use: runs the full setup only if something is missing.
pub fn ensure() -> anyhow::Result<()> {
    if missing_apt_packages()?.is_empty()
        && missing_toolchains().is_empty()
        && bpf_linker_ok()
        && missing_other_containerd().is_empty()
        && browser_tests_ok()
        && schemathesis_ok()
    {
        return Ok(());
    }
    run()
}

fn missing_apt_packages() -> anyhow::Result<Vec<&'static str>> {
    let out = Cmd::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(APT_PACKAGES)
        .command()
        .output()
        .context("dpkg-query (is this Debian?)")?;
    // dpkg-query exits 1 when some package is unknown; the listing is still complete.
    let listing = String::from_utf8_lossy(&out.stdout);
    Ok(APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            !listing.lines().any(|line| {
                let mut words = line.split_whitespace();
                words.next() == Some(pkg)
                    && words.next().is_some_and(|status| status.starts_with("ii"))
            })
        })
        .collect())
}

fn apt() -> anyhow::Result<()> {
    let missing = missing_apt_packages()?;
    if missing.is_empty() {
        println!("setup: Debian packages present");
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    Cmd::new("apt-get").args(["update", "-q"]).run()?;
    Cmd::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        // Debian's maintainer scripts would start containerd, etcd and the registry as system
        // services; this project starts its own, with its own configs.
        .env("RUNLEVEL", "1")
        .run()?;
    let still = missing_apt_packages()?;
    if !still.is_empty() {
        bail!("apt-get did not install: {}", still.join(" "));
    }
    Ok(())
}

/// (toolchain, components) pairs.
fn toolchains() -> [(&'static str, &'static [&'static str]); 2] {
    [
        (toolchain::HOST, &["rustfmt", "clippy"]),
        (toolchain::EBPF, &["rust-src", "clippy"]),
    ]
}

fn missing_toolchains() -> Vec<&'static str> {
    toolchains()
        .into_iter()
        .filter(|(name, components)| {
            let Some(installed) = Cmd::new("rustup")
                .args(["component", "list", "--installed", "--toolchain", name])
                .probe()
            else {
                return true;
            };
            !components.iter().all(|c| {
                installed
                    .lines()
                    .any(|line| line.starts_with(&format!("{c}-")) || line == *c)
            })
        })
        .map(|(name, _)| name)
        .collect()
}

fn rust_toolchains() -> anyhow::Result<()> {
    for (name, components) in toolchains() {
        if !missing_toolchains().contains(&name) {
            println!("setup: toolchain {name} present");
            continue;
        }
        let mut cmd = Cmd::new("rustup").args([
            "toolchain",
            "install",
            "--no-self-update",
            name,
            "--profile",
            "minimal",
        ]);
        for component in components {
            cmd = cmd.args(["-c", component]);
        }
        cmd.run()?;
    }
    Ok(())
}

fn bpf_linker_ok() -> bool {
    Cmd::new("bpf-linker")
        .args(["--version"])
        .env("PATH", crate::cmd::path_with_cargo_bin())
        .probe()
        .is_some_and(|out| out.contains(toolchain::BPF_LINKER_VERSION))
}

/// bpf-linker linked against the pinned nightly's own libLLVM, so the versions match exactly
/// and no Debian LLVM is needed (a plain `cargo install` would find Debian's LLVM 14 and fail).
fn bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_ok() {
        println!(
            "setup: bpf-linker {} present",
            toolchain::BPF_LINKER_VERSION
        );
        return Ok(());
    }
    let sysroot = Cmd::new("rustc")
        .args([
            format!("+{}", toolchain::EBPF),
            "--print".into(),
            "sysroot".into(),
        ])
        .read()?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let prefix_lib = Path::new(toolchain::LLVM_PREFIX).join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for link in [
        prefix_lib.join("libLLVM.so"),
        prefix_lib.join(libllvm.file_name().context("libLLVM has a name")?),
    ] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Cmd::new("cargo")
        .args([
            &format!("+{}", toolchain::HOST),
            "install",
            &format!("bpf-linker@{}", toolchain::BPF_LINKER_VERSION),
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            toolchain::BPF_LINKER_LLVM_FEATURE,
        ])
        .env("LLVM_PREFIX", toolchain::LLVM_PREFIX)
        .run()?;
    if !bpf_linker_ok() {
        bail!("bpf-linker was installed but does not run");
    }
    Ok(())
}

fn missing_other_containerd() -> Vec<(&'static str, &'static str)> {
    OTHER_CONTAINERD
        .iter()
        .copied()
        .filter(|(_, name)| {
            !Path::new(OTHER_CONTAINERD_DIR)
                .join(name)
                .join("usr/bin/containerd")
                .exists()
        })
        .collect()
}

/// Fetches containerd 1.7 and 2.x from newer Debian suites and unpacks them under
/// [`OTHER_CONTAINERD_DIR`]. apt works with a private sources list, package lists and cache, so
/// the machine's apt configuration and installed containerd stay as they are. Only the
/// compatibility test needs them, so a failure is a warning (the test says what it skipped).
fn other_containerd() {
    let missing = missing_other_containerd();
    if missing.is_empty() {
        println!("setup: other containerd releases present");
        return;
    }
    let work = std::env::temp_dir().join(format!("hivemind-apt-{}", std::process::id()));
    let result = fetch_other_containerd(&work, &missing);
    let _ = fs::remove_dir_all(&work);
    if let Err(err) = result {
        println!(
            "setup: warning: no other containerd releases for the compatibility test: {err:#}"
        );
    }
}

fn fetch_other_containerd(work: &Path, missing: &[(&str, &str)]) -> anyhow::Result<()> {
    let parts = work.join("sources.list.d");
    let debs = work.join("debs");
    for dir in [
        parts.clone(),
        work.join("lists/partial"),
        work.join("cache/archives/partial"),
        debs.clone(),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let suites: Vec<&str> = missing.iter().map(|(suite, _)| *suite).collect();
    fs::write(
        parts.join("hivemind-other.sources"),
        format!(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            suites.join(" ")
        ),
    )
    .context("writing the private apt sources")?;
    let options = [
        "-o".to_owned(),
        "Dir::Etc::SourceList=/dev/null".to_owned(),
        "-o".to_owned(),
        format!("Dir::Etc::SourceParts={}", parts.display()),
        "-o".to_owned(),
        format!("Dir::State::Lists={}", work.join("lists").display()),
        "-o".to_owned(),
        format!("Dir::Cache={}", work.join("cache").display()),
        "-o".to_owned(),
        "APT::Sandbox::User=root".to_owned(),
        "-o".to_owned(),
        "Debug::NoLocking=1".to_owned(),
    ];
    Cmd::new("apt-get")
        .args(["-q", "update"])
        .args(&options)
        .run()?;
    for (suite, name) in missing {
        let into = debs.join(name);
        fs::create_dir_all(&into).with_context(|| format!("creating {}", into.display()))?;
        let mut download = Cmd::new("apt-get")
            .args(["-q", "download", &format!("containerd/{suite}")])
            .args(&options);
        download.command().current_dir(&into);
        download.run()?;
        let deb = fs::read_dir(&into)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get downloaded no containerd from {suite}"))?;
        let target = Path::new(OTHER_CONTAINERD_DIR).join(name);
        let partial = Path::new(OTHER_CONTAINERD_DIR).join(format!(".{name}.partial"));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
        Cmd::new("dpkg-deb")
            .args(["-x"])
            .args([&deb, &partial])
            .run()?;
        let _ = fs::remove_dir_all(&target);
        fs::rename(&partial, &target)
            .with_context(|| format!("moving the unpacked release to {}", target.display()))?;
        println!(
            "setup: containerd from Debian {suite} unpacked in {}",
            target.display()
        );
    }
    Ok(())
}

/// Where `tests/browser` keeps playwright-core (installed from its committed lock file).
fn browser_dir() -> std::path::PathBuf {
    crate::cmd::root().join("tests/browser")
}

/// Node.js 20 or newer (playwright-core's minimum).
fn node_ok() -> bool {
    Cmd::new("node")
        .args(["--version"])
        .probe()
        .and_then(|v| {
            v.trim()
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|major| major.parse::<u32>().ok())
        })
        .is_some_and(|major| major >= 20)
}

/// The installed playwright-core matches the lock file (npm writes its copy of the lock).
fn browser_tests_ok() -> bool {
    let dir = browser_dir();
    let lock = fs::read_to_string(dir.join("package-lock.json")).ok();
    let installed = fs::read_to_string(dir.join("node_modules/.package-lock.json")).ok();
    node_ok()
        && lock.is_some()
        && lock.as_deref().map(lock_packages) == installed.as_deref().map(lock_packages)
}

/// The `packages` of a lock file other than the root entry, as text, for comparing the
/// committed lock with what `npm ci` installed.
fn lock_packages(text: &str) -> String {
    text.lines()
        .skip_while(|line| !line.contains("\"node_modules/"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
}

/// playwright-core for the browser tests, pinned by the committed `package-lock.json`. Node.js
/// comes with the machine (the project's machines have Node.js 20); on a machine without it,
/// Debian's is installed, which is too old for playwright-core (the UI test then says so).
fn browser_tests() -> anyhow::Result<()> {
    if browser_tests_ok() {
        println!("setup: playwright-core present");
        return Ok(());
    }
    if !node_ok() && Cmd::new("npm").args(["--version"]).probe().is_none() {
        Cmd::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "nodejs",
                "npm",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()?;
    }
    if !node_ok() {
        println!("setup: warning: Node.js 20 or newer is needed for the browser tests");
        return Ok(());
    }
    let mut npm = Cmd::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
    npm.command().current_dir(browser_dir());
    // playwright-core installs no browser; make sure nothing tries to.
    npm.env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1").run()
}

/// Where schemathesis (the API fuzzer) lives: its own virtualenv, so the machine's Python
/// packages stay as they are.
pub const SCHEMATHESIS_VENV: &str = "/opt/hivemind/schemathesis";
const SCHEMATHESIS_VERSION: &str = "4.32.5";

fn schemathesis_ok() -> bool {
    Cmd::new(format!("{SCHEMATHESIS_VENV}/bin/schemathesis"))
        .args(["--version"])
        .probe()
        .is_some_and(|v| v.contains(SCHEMATHESIS_VERSION))
}

/// `schemathesis` from `PyPI`, pinned (about a minute on a fresh machine).
fn schemathesis() -> anyhow::Result<()> {
    if schemathesis_ok() {
        println!("setup: schemathesis {SCHEMATHESIS_VERSION} present");
        return Ok(());
    }
    let python = ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| {
            Cmd::new(p)
                .args(["-c", "import venv, ensurepip"])
                .probe()
                .is_some()
        })
        .context("no python3 with venv and ensurepip (apt-get install python3-venv)")?;
    let _ = fs::remove_dir_all(SCHEMATHESIS_VENV);
    Cmd::new(python)
        .args(["-m", "venv", SCHEMATHESIS_VENV])
        .run()?;
    Cmd::new(format!("{SCHEMATHESIS_VENV}/bin/pip"))
        .args([
            "install",
            "-q",
            "--disable-pip-version-check",
            &format!("schemathesis=={SCHEMATHESIS_VERSION}"),
        ])
        .run()?;
    if !schemathesis_ok() {
        bail!("schemathesis was installed but does not run");
    }
    Ok(())
}
