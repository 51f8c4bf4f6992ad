//! The test image: busybox-static with every applet (sh, httpd, nc, wget, ping, ...), whose
//! default command serves "hivemind test image" over HTTP on port 80. Built by
//! `tests/image/build.sh` once per test process.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::util::{check, workspace};

/// The OCI layout directory, built on first use.
pub fn oci_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let dir = workspace().join("target/hivemind-test-image");
        check(Command::new(workspace().join("tests/image/build.sh")).arg(&dir));
        dir
    })
}

/// Copies the test image to `reference` (HOST:PORT/REPO:TAG) over plain HTTP, running skopeo
/// inside `netns` when the registry lives there.
pub fn push(reference: &str, netns: Option<&str>) {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg("skopeo");
            c
        }
        None => Command::new("skopeo"),
    };
    check(
        command
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:latest", oci_layout().display()))
            .arg(format!("docker://{reference}")),
    );
}
