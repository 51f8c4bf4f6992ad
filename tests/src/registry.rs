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
        Self::start_configured(netns, addr, None, false)
    }

    /// A registry inside `netns` on `addr` that speaks only HTTPS, with a certificate from a
    /// CA made for it (see [`SecureRegistry::ca_path`]), and wants HTTP basic auth as `user`
    /// with `password` (bcrypt htpasswd, as docker-registry requires).
    pub fn start_secure_in(
        netns: &Netns,
        addr: &str,
        user: &str,
        password: &str,
    ) -> SecureRegistry {
        let dir = tempfile::Builder::new()
            .prefix("hm-regtls-")
            .tempdir()
            .expect("registry tls dir");
        let ip: std::net::IpAddr = addr
            .rsplit_once(':')
            .and_then(|(host, _)| host.parse().ok())
            .expect("a registry address IP:PORT");
        let (ca_pem, cert_pem, key_pem) = tls_material(ip);
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_pem).expect("write ca");
        std::fs::write(dir.path().join("server.pem"), cert_pem).expect("write cert");
        std::fs::write(dir.path().join("server-key.pem"), key_pem).expect("write key");
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .expect("htpasswd (apache2-utils) runs");
        assert!(htpasswd.status.success(), "htpasswd failed");
        std::fs::write(dir.path().join("htpasswd"), htpasswd.stdout).expect("write htpasswd");
        let extra = format!(
            "auth:\n  htpasswd:\n    realm: hivemind-test\n    path: {d}/htpasswd\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {d}/server.pem\n    key: {d}/server-key.pem\n",
            d = dir.path().display()
        );
        let registry = Self::start_configured(Some(netns), addr, Some(&extra), true);
        SecureRegistry {
            registry,
            ca_path,
            creds: format!("{user}:{password}"),
            _tls_dir: dir,
        }
    }

    /// A plain-HTTP registry inside `netns` on `addr` that wants bearer tokens from `tokens`
    /// (Docker Hub's scheme).
    pub fn start_token_in(netns: &Netns, addr: &str, tokens: &crate::TokenServer) -> Self {
        let http = format!("{}http:\n  addr: {addr}\n", tokens.registry_auth());
        Self::start_configured(Some(netns), addr, Some(&http), false)
    }

    /// `http` is the config's `http:` (and any `auth:`) section, `None` for plain HTTP on
    /// `addr`; `tls` when it serves HTTPS only.
    fn start_configured(netns: Option<&Netns>, addr: &str, http: Option<&str>, tls: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hm-reg-")
            .tempdir()
            .expect("registry dir");
        let config = dir.path().join("config.yml");
        let http_section =
            http.map_or_else(|| format!("http:\n  addr: {addr}\n"), ToOwned::to_owned);
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}/data\n  delete:\n    enabled: true\n{http_section}",
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
                // Any HTTP answer will do (one that wants credentials answers 401).
                Some(ns) => Command::new("ip")
                    .args(["netns", "exec", ns, "curl", "-sk", "-o", "/dev/null"])
                    .arg(format!(
                        "{}://{probe_addr}/v2/",
                        if tls { "https" } else { "http" }
                    ))
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

/// A registry with TLS and basic auth (see [`Registry::start_secure_in`]).
#[derive(Debug)]
pub struct SecureRegistry {
    pub registry: Registry,
    /// The CA certificate (PEM) the registry's certificate chains to.
    pub ca_path: PathBuf,
    /// `USER:PASSWORD`, as skopeo's `--dest-creds` takes it.
    pub creds: String,
    _tls_dir: TempDir,
}

impl SecureRegistry {
    /// Pushes the OCI layout at `layout` as `REPO:TAG` (with the credentials) and returns
    /// the full reference.
    pub fn push_image(&self, layout: &Path, repo_tag: &str) -> String {
        self.registry
            .push_image_with(layout, repo_tag, &["--dest-creds", &self.creds])
    }
}

/// A CA, and a server certificate for `ip` signed by it: (CA PEM, certificate PEM, key PEM).
fn tls_material(ip: std::net::IpAddr) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hivemind test registry CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.subject_alt_names.push(SanType::IpAddress(ip));
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}
