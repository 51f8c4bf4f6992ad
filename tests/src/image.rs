//! The test image: busybox-static with every applet (sh, httpd, nc, wget, ping, ...), whose
//! default command serves "hivemind test image" over HTTP on port 80. Built by
//! `tests/image/build.sh` once per test process.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
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

/// The test image with a second layer on top: it adds `/www/layer2.html` ("second layer") and
/// removes `/data` with a whiteout. Built on first use.
pub fn oci_layout_two_layers() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let dir = workspace().join("target/hivemind-test-image-2");
        check(
            Command::new(workspace().join("tests/image/build.sh"))
                .arg(&dir)
                .arg("two-layers"),
        );
        dir
    })
}

/// The test image built as `variant` (`""`, `two-layers`, `accounts`; see
/// `tests/image/build.sh`) with `config` (JSON) as its config's `config` object instead of the
/// default one. Built on first use per `name` (a directory name under `target/`).
pub fn oci_layout_configured(name: &str, variant: &str, config: &str) -> PathBuf {
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let dir = workspace().join(format!("target/hivemind-test-image-{name}"));
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if built.insert(name.to_owned()) {
        let mut command = Command::new(workspace().join("tests/image/build.sh"));
        command.arg(&dir).env("CONFIG", config);
        if !variant.is_empty() {
            command.arg(variant);
        }
        check(&mut command);
    }
    dir
}

/// The manifest digest of an OCI layout (its one `index.json` entry).
pub fn manifest_digest(layout: &Path) -> String {
    let index = std::fs::read_to_string(layout.join("index.json")).expect("read index.json");
    let index: serde_json::Value = serde_json::from_str(&index).expect("index.json is JSON");
    index["manifests"][0]["digest"]
        .as_str()
        .expect("index.json names a manifest")
        .to_owned()
}

/// Copies the test image to `reference` (HOST:PORT/REPO:TAG) over plain HTTP, running skopeo
/// inside `netns` when the registry lives there.
pub fn push(reference: &str, netns: Option<&str>) {
    push_layout(oci_layout(), reference, netns);
}

/// Copies the OCI layout at `layout` (its `latest` tag) to `reference`, as [`push`] does.
pub fn push_layout(layout: &Path, reference: &str, netns: Option<&str>) {
    push_layout_with(layout, reference, netns, &[]);
}

/// [`push_layout`] with more `skopeo copy` options, e.g. `--format v2s2` (Docker manifests)
/// or `--all` (every image of an index).
pub fn push_layout_with(layout: &Path, reference: &str, netns: Option<&str>, options: &[&str]) {
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
            .args(options)
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{reference}")),
    );
}
