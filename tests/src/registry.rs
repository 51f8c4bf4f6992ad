//! A private OCI registry (Debian's docker-registry) with filesystem storage.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    Netns, image,
    process::Process,
    util::{free_port, wait_for},
};

#[derive(Debug)]
pub struct Registry {
    process: Process,
    addr: String,
    netns: Option<String>,
    dir: TempDir,
}

impl Registry {
    /// A registry on 127.0.0.1 of the root namespace, on a free port.
    pub fn start() -> Self {
        Self::start_at(None, &format!("127.0.0.1:{}", free_port()))
    }

    /// A registry inside `netns`, listening on `addr` there (e.g. "127.0.0.1:5000").
    pub fn start_in(netns: &Netns, addr: &str) -> Self {
        Self::start_at(Some(netns), addr)
    }

    fn start_at(netns: Option<&Netns>, addr: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hm-reg-")
            .tempdir()
            .expect("registry dir");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}/data\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().display()
            ),
        )
        .expect("write registry config");
        let mut command = match netns {
            Some(ns) => ns.command("docker-registry"),
            None => Command::new("docker-registry"),
        };
        command.arg("serve").arg(&config);
        let mut process = Process::spawn(
            "docker-registry",
            &mut command,
            &dir.path().join("registry.log"),
        );
        let probe_addr = addr.to_owned();
        let netns_name = netns.map(|ns| ns.name().to_owned());
        wait_for("the registry to listen", Duration::from_secs(20), || {
            if let Some(status) = process.exited() {
                panic!("docker-registry exited ({status}):\n{}", process.log());
            }
            let up = match &netns_name {
                None => TcpStream::connect(&probe_addr).is_ok(),
                Some(ns) => Command::new("ip")
                    .args(["netns", "exec", ns, "curl", "-sf", "-o", "/dev/null"])
                    .arg(format!("http://{probe_addr}/v2/"))
                    .status()
                    .is_ok_and(|s| s.success()),
            };
            up.then_some(())
        });
        Self {
            process,
            addr: addr.to_owned(),
            netns: netns.map(|ns| ns.name().to_owned()),
            dir,
        }
    }

    /// HOST:PORT, as image references and `--insecure-registry` spell it.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Pushes the test image as `REPO:TAG` and returns the full reference.
    pub fn push_test_image(&self, repo_tag: &str) -> String {
        self.push_image(image::oci_layout(), repo_tag)
    }

    /// Pushes the OCI layout at `layout` as `REPO:TAG` and returns the full reference.
    pub fn push_image(&self, layout: &Path, repo_tag: &str) -> String {
        self.push_image_with(layout, repo_tag, &[])
    }

    /// [`Registry::push_image`] with more `skopeo copy` options (`--format v2s2`, `--all`).
    pub fn push_image_with(&self, layout: &Path, repo_tag: &str, options: &[&str]) -> String {
        let reference = format!("{}/{repo_tag}", self.addr);
        image::push_layout_with(layout, &reference, self.netns.as_deref(), options);
        reference
    }

    /// Where the registry keeps blob `sha256:<hex>` on disk (for tests that corrupt one).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}
