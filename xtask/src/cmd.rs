//! Running commands: echo them, fail with the command line on a non-zero exit.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::toolchain;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub struct Cmd {
    inner: Command,
    shown: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let shown = program.as_ref().to_string_lossy().into_owned();
        let mut inner = Command::new(program);
        inner.current_dir(root());
        Self { inner, shown }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self.shown.push(' ');
            self.shown.push_str(&arg.as_ref().to_string_lossy());
            self.inner.arg(arg);
        }
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.inner.env(key, value);
        self
    }

    /// Runs with inherited stdio; an error if it exits non-zero.
    pub fn run(mut self) -> anyhow::Result<()> {
        eprintln!("$ {}", self.shown);
        let status = self
            .inner
            .status()
            .with_context(|| format!("cannot run {}", self.shown))?;
        if !status.success() {
            bail!("`{}` failed ({status})", self.shown);
        }
        Ok(())
    }

    /// Runs quietly and returns stdout; an error if it exits non-zero.
    pub fn read(mut self) -> anyhow::Result<String> {
        let out = self
            .inner
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {}", self.shown))?;
        if !out.status.success() {
            bail!("`{}` failed ({})", self.shown, out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs silently (for probes); stdout if it exits zero, `None` otherwise.
    pub fn probe(mut self) -> Option<String> {
        let out = self.inner.stderr(Stdio::null()).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn command(&mut self) -> &mut Command {
        &mut self.inner
    }
}

/// `cargo +<pinned host toolchain> ARGS`, with bpf-linker on PATH (build.rs needs it).
pub fn cargo_host<S: AsRef<OsStr>>(args: &[S]) -> Cmd {
    Cmd::new("cargo")
        .args([format!("+{}", toolchain::HOST)])
        .args(args)
        .env("PATH", path_with_cargo_bin())
}

/// PATH with `$CARGO_HOME/bin` in front, where `cargo install` put bpf-linker.
pub fn path_with_cargo_bin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let bin = cargo_home().join("bin");
    format!("{}:{path}", bin.display())
}

pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}
