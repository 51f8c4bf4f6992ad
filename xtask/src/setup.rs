//! `cargo xtask setup`: everything a fresh Debian 12 machine lacks, installed idempotently.
//! Each step checks first and does nothing when already satisfied, so a second run is a no-op.

use std::{fs, path::Path};

use anyhow::{Context as _, bail};

use crate::{cmd::Cmd, toolchain};

/// Debian packages the build, the agent and the tests need.
const APT_PACKAGES: &[&str] = &[
    // build
    "protobuf-compiler", // containerd-client's and the agent's build scripts run protoc
    // runtime
    "containerd",
    "runc",
    "iproute2",
    "etcd-server",
    // tests: registry, image, network tools
    "docker-registry",
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
    "jq",
    "socat",
];

pub fn run() -> anyhow::Result<()> {
    apt()?;
    rust_toolchains()?;
    bpf_linker()?;
    println!("setup: ok");
    Ok(())
}

/// The quick check other tasks use: runs the full setup only if something is missing.
pub fn ensure() -> anyhow::Result<()> {
    if missing_apt_packages()?.is_empty() && missing_toolchains().is_empty() && bpf_linker_ok() {
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
