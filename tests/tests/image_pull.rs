//! Image pulls through the agent's library (`Runtime::images()`): into a private containerd,
//! from a private registry, checked with `ctr` — the record and its digest, the committed
//! snapshot chain, a container that runs on the unpacked rootfs, survival through containerd's
//! GC and a restart, the cache, force re-pulls, and clear errors that leave nothing behind.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hivemind_agent::runtime::{
    Runtime,
    image::{ImageError, PullProgress, PulledImage, RegistryOptions},
};
use hivemind_tests::{
    Containerd, Registry, image,
    util::{check, free_port, sh},
};
use tokio::sync::mpsc;

const NS: &str = "hmpull";

/// The agent's image API on one containerd, with its own tokio runtime (tests stay sync).
struct Client {
    runtime: Runtime,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// Trusts `insecure` registries over plain HTTP; default timeouts.
    fn new(socket: &Path, insecure: &[&str]) -> Self {
        Self::with_options(
            socket,
            RegistryOptions {
                insecure: insecure.iter().map(|s| (*s).to_owned()).collect(),
                ..RegistryOptions::default()
            },
        )
    }

    fn with_options(socket: &Path, options: RegistryOptions) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let runtime = {
            let _guard = rt.enter();
            Runtime::with_registries(socket.to_owned(), NS.to_owned(), options)
        };
        Self { runtime, rt }
    }

    fn ensure(&self, reference: &str, force: bool) -> Result<PulledImage, ImageError> {
        self.rt
            .block_on(self.runtime.images().ensure_image(reference, force, None))
    }

    /// [`Client::ensure`], also returning the progress events it sent.
    fn ensure_with_progress(
        &self,
        reference: &str,
        force: bool,
    ) -> (Result<PulledImage, ImageError>, Vec<PullProgress>) {
        let (tx, mut rx) = mpsc::channel(4096);
        let result = self.rt.block_on(self.runtime.images().ensure_image(
            reference,
            force,
            Some(tx),
        ));
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        (result, events)
    }

    fn pull(&self, reference: &str) -> PulledImage {
        self.ensure(reference, false)
            .unwrap_or_else(|err| panic!("pull {reference}: {err}"))
    }

    fn local(&self, reference: &str) -> Result<PulledImage, ImageError> {
        self.rt
            .block_on(self.runtime.images().local_image(reference))
    }

    fn remove(&self, reference: &str) -> Result<bool, ImageError> {
        self.rt
            .block_on(self.runtime.images().remove_image(reference))
    }
}

fn lines(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The DIGEST column of `ctr images ls` for image `name`.
fn ctr_image_digest(containerd: &Containerd, name: &str) -> Option<String> {
    containerd
        .ctr_ok(&["-n", NS, "images", "ls"])
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&name))
        .and_then(|cols| cols.get(2).map(|d| (*d).to_owned()))
}

/// `ctr snapshots ls` as (key, parent, kind); the bottom layer has no parent.
fn snapshots(containerd: &Containerd) -> Vec<(String, String, String)> {
    containerd
        .ctr_ok(&["-n", NS, "snapshots", "ls"])
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            match cols.as_slice() {
                [key, kind] => Some(((*key).to_owned(), String::new(), (*kind).to_owned())),
                [key, parent, kind] => {
                    Some(((*key).to_owned(), (*parent).to_owned(), (*kind).to_owned()))
                }
                _ => None,
            }
        })
        .collect()
}

fn content(containerd: &Containerd) -> Vec<String> {
    lines(&containerd.ctr_ok(&["-n", NS, "content", "ls", "-q"]))
}

fn leases(containerd: &Containerd) -> Vec<String> {
    lines(&containerd.ctr_ok(&["-n", NS, "leases", "ls", "-q"]))
}

/// Runs `sh -c SCRIPT` in a throwaway container of `image`; returns stdout.
fn run_in(containerd: &Containerd, image: &str, script: &str) -> String {
    let id = format!("run{}", free_port());
    containerd.ctr_ok(&["-n", NS, "run", "--rm", image, &id, "sh", "-c", script])
}

/// Runs containerd's garbage collector now: deleting a lease synchronously collects everything
/// nothing references.
fn collect_garbage(containerd: &Containerd) {
    let id = lines(&containerd.ctr_ok(&["-n", NS, "leases", "create"]))
        .first()
        .and_then(|line| line.split_whitespace().next().map(str::to_owned))
        .expect("lease id");
    containerd.ctr_ok(&["-n", NS, "leases", "rm", "--sync", &id]);
}

fn assert_nothing_left(containerd: &Containerd, after: &str) {
    collect_garbage(containerd);
    assert_eq!(
        containerd.images(NS),
        Vec::<String>::new(),
        "images after {after}"
    );
    assert_eq!(
        leases(containerd),
        Vec::<String>::new(),
        "leases after {after}"
    );
    assert_eq!(snapshots(containerd), vec![], "snapshots after {after}");
    assert_eq!(
        content(containerd),
        Vec::<String>::new(),
        "content after {after}"
    );
}

/// sha256 of `bytes` as `sha256:<hex>`, by sha256sum (independent of the agent's code).
fn sha256(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("blob");
    std::fs::write(&file, bytes).expect("write blob");
    let out = check(std::process::Command::new("sha256sum").arg(&file));
    format!("sha256:{}", out.split_whitespace().next().expect("hash"))
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    std::fs::read(layout.join("blobs/sha256").join(hex)).expect("read blob")
}

fn json_blob(layout: &Path, digest: &str) -> serde_json::Value {
    serde_json::from_slice(&blob(layout, digest)).expect("JSON blob")
}

/// (manifest, config) of an OCI layout.
fn manifest_and_config(layout: &Path) -> (serde_json::Value, serde_json::Value) {
    let manifest = json_blob(layout, &image::manifest_digest(layout));
    let config = json_blob(
        layout,
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    );
    (manifest, config)
}

fn diff_ids(layout: &Path) -> Vec<String> {
    let (_, config) = manifest_and_config(layout);
    config["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff ids")
        .iter()
        .map(|d| d.as_str().expect("diff id").to_owned())
        .collect()
}

/// Progress of a cold one-layer pull: resolve, bytes of the layer up to its size, unpack, done.
fn assert_progress(
    events: &[PullProgress],
    reference: &str,
    manifest_digest: &str,
    layer_size: u64,
) {
    assert!(
        matches!(&events[0], PullProgress::Resolving { image } if *image == reference),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, PullProgress::Resolved { layers: 1, total_bytes, .. } if *total_bytes == layer_size)),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, PullProgress::Layer { index: 0, done, total, cached: false, .. } if done == total && *total == layer_size)),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            PullProgress::Unpacking {
                index: 0,
                layers: 1,
                cached: false,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(PullProgress::Done { pulled: true, digest, .. }) if *digest == manifest_digest),
        "{events:?}"
    );
}

#[test]
fn pull_unpacks_runs_and_survives_gc_and_restart() {
    let mut containerd = Containerd::start();
    let registry = Registry::start();
    let reference = registry.push_test_image("hivemind/test:1");
    let client = Client::new(containerd.socket(), &[registry.addr()]);

    let started = Instant::now();
    let (result, events) = client.ensure_with_progress(&reference, false);
    let cold = started.elapsed();
    let pulled = result.unwrap_or_else(|err| panic!("pull {reference}: {err}"));
    eprintln!("cold pull of the test image: {cold:?}");

    // What the runtime gets.
    let manifest_digest = image::manifest_digest(image::oci_layout());
    assert_eq!(pulled.name, reference);
    assert_eq!(pulled.digest, manifest_digest);
    assert_eq!(pulled.manifest_digest, manifest_digest);
    assert_eq!(pulled.config.cmd, ["/bin/entrypoint"]);
    assert_eq!(pulled.config.env, ["PATH=/bin"]);
    assert_eq!(pulled.config.working_dir, "/");
    assert_eq!(pulled.config.exposed_ports, ["80/tcp"]);
    assert_eq!(pulled.chain_id, diff_ids(image::oci_layout())[0]);
    let (manifest, _) = manifest_and_config(image::oci_layout());
    let layer_size = manifest["layers"][0]["size"].as_u64().expect("layer size");
    assert!(
        pulled.size > layer_size,
        "size {} counts the layer",
        pulled.size
    );

    assert_progress(&events, &reference, &manifest_digest, layer_size);

    // containerd's view.
    assert_eq!(
        ctr_image_digest(&containerd, &reference).as_deref(),
        Some(manifest_digest.as_str())
    );
    assert_eq!(
        snapshots(&containerd),
        vec![(
            pulled.chain_id.clone(),
            String::new(),
            "Committed".to_owned()
        )]
    );
    assert_eq!(
        leases(&containerd),
        Vec::<String>::new(),
        "the pull's lease is gone"
    );
    assert_eq!(content(&containerd).len(), 3, "manifest, config, layer");

    // The unpacked rootfs is what a container runs on.
    let out = run_in(&containerd, &reference, "cat /www/index.html");
    assert_eq!(out.trim(), "hivemind test image");

    // GC keeps all of it: the labels reference config, layer and snapshot.
    collect_garbage(&containerd);
    assert_eq!(content(&containerd).len(), 3, "content after GC");
    assert_eq!(snapshots(&containerd).len(), 1, "snapshots after GC");
    let info = containerd.ctr_ok(&["-n", NS, "content", "ls"]);
    assert!(
        info.contains("containerd.io/gc.ref.content.config="),
        "{info}"
    );
    assert!(info.contains("containerd.io/gc.ref.content.l.0="), "{info}");
    assert!(
        info.contains(&format!(
            "containerd.io/gc.ref.snapshot.overlayfs={}",
            pulled.chain_id
        )),
        "{info}"
    );
    assert!(info.contains("containerd.io/uncompressed="), "{info}");

    // And a restart of containerd; then the agent reads it back without the registry.
    drop(registry);
    containerd.kill();
    containerd.restart();
    collect_garbage(&containerd);
    let local = client
        .local(&reference)
        .unwrap_or_else(|err| panic!("local {reference}: {err}"));
    assert_eq!(local, pulled);
    let out = run_in(&containerd, &reference, "cat /www/index.html");
    assert_eq!(out.trim(), "hivemind test image");
}

#[test]
fn second_pull_is_skipped_without_the_registry() {
    let containerd = Containerd::start();
    let registry = Registry::start();
    let reference = registry.push_test_image("hivemind/test:cached");
    let client = Client::new(containerd.socket(), &[registry.addr()]);
    let first = client.pull(&reference);

    // Stop the registry: a cached image needs no network.
    drop(registry);
    let started = Instant::now();
    let (result, events) = client.ensure_with_progress(&reference, false);
    let cached = started.elapsed();
    eprintln!("cached ensure_image of the test image: {cached:?}");
    let second = result.unwrap_or_else(|err| panic!("cached ensure_image: {err}"));
    assert_eq!(second, first);
    assert!(
        cached < Duration::from_secs(1),
        "cached ensure took {cached:?}"
    );
    assert_eq!(
        events,
        vec![PullProgress::Done {
            image: reference.clone(),
            digest: first.digest.clone(),
            pulled: false
        }]
    );

    // Short names and explicit defaults are the same image.
    let spelled = reference.trim_end_matches(":cached").to_owned() + ":cached";
    assert_eq!(client.local(&spelled).expect("local").name, reference);

    // A force re-pull needs the registry, and says clearly that it is gone.
    let err = client
        .ensure(&reference, true)
        .expect_err("force re-pull without a registry");
    assert!(
        matches!(err, ImageError::Unreachable { .. }),
        "{err:?}: {err}"
    );
    // ...and leaves the image as it was.
    assert_eq!(client.local(&reference).expect("still there"), first);
    assert_eq!(leases(&containerd), Vec::<String>::new());
}

#[test]
fn two_layers_chain_snapshots_and_share_the_base() {
    let containerd = Containerd::start();
    let registry = Registry::start();
    let base = registry.push_test_image("hivemind/base:1");
    let layered = registry.push_image(image::oci_layout_two_layers(), "hivemind/layered:1");
    let client = Client::new(containerd.socket(), &[registry.addr()]);

    let base_image = client.pull(&base);
    let (result, events) = client.ensure_with_progress(&layered, false);
    let pulled = result.unwrap_or_else(|err| panic!("pull {layered}: {err}"));

    // Chain ids per the OCI spec, computed here with sha256sum.
    let diff_ids = diff_ids(image::oci_layout_two_layers());
    assert_eq!(diff_ids.len(), 2);
    let top = sha256(format!("{} {}", diff_ids[0], diff_ids[1]).as_bytes());
    assert_eq!(pulled.chain_id, top);
    assert_eq!(base_image.chain_id, diff_ids[0], "same base layer");

    // The base layer was already there (content and snapshot), only the top was new.
    assert!(
        events.iter().any(|e| matches!(
            e,
            PullProgress::Layer {
                index: 0,
                cached: true,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            PullProgress::Unpacking {
                index: 0,
                cached: true,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            PullProgress::Unpacking {
                index: 1,
                layers: 2,
                cached: false,
                ..
            }
        )),
        "{events:?}"
    );

    let mut snaps = snapshots(&containerd);
    snaps.sort();
    let mut expected = vec![
        (diff_ids[0].clone(), String::new(), "Committed".to_owned()),
        (top.clone(), diff_ids[0].clone(), "Committed".to_owned()),
    ];
    expected.sort();
    assert_eq!(snaps, expected);

    // Both layers applied, in order: the file of the top layer, and its whiteout.
    let out = run_in(
        &containerd,
        &layered,
        "cat /www/index.html /www/layer2.html; test -e /data && echo data-present || echo data-gone",
    );
    assert_eq!(
        lines(&out),
        ["hivemind test image", "second layer", "data-gone"]
    );
    let out = run_in(&containerd, &base, "test -d /data && echo data-present");
    assert_eq!(out.trim(), "data-present", "the base image is unchanged");

    // Removing the layered image keeps what the base image still uses.
    assert!(client.remove(&layered).expect("remove"));
    collect_garbage(&containerd);
    assert_eq!(
        snapshots(&containerd),
        vec![(diff_ids[0].clone(), String::new(), "Committed".to_owned())]
    );
    assert_eq!(client.local(&base).expect("base still there"), base_image);
    assert!(matches!(
        client.local(&layered),
        Err(ImageError::NotPresent { .. })
    ));
}

#[test]
fn force_repull_follows_a_moved_tag() {
    let containerd = Containerd::start();
    let registry = Registry::start();
    let reference = registry.push_test_image("hivemind/moving:1");
    let client = Client::new(containerd.socket(), &[registry.addr()]);
    let old = client.pull(&reference);

    registry.push_image(image::oci_layout_two_layers(), "hivemind/moving:1");
    let new_digest = image::manifest_digest(image::oci_layout_two_layers());
    assert_ne!(old.digest, new_digest);

    // Without force: what is here.
    assert_eq!(client.ensure(&reference, false).expect("cached"), old);
    // With force: asks the registry again and follows the tag.
    let started = Instant::now();
    let new = client
        .ensure(&reference, true)
        .unwrap_or_else(|err| panic!("force pull: {err}"));
    eprintln!("force re-pull (one new layer): {:?}", started.elapsed());
    assert_eq!(new.digest, new_digest);
    assert_ne!(new.chain_id, old.chain_id);
    assert_eq!(
        ctr_image_digest(&containerd, &reference).as_deref(),
        Some(new_digest.as_str())
    );
    let out = run_in(&containerd, &reference, "cat /www/layer2.html");
    assert_eq!(out.trim(), "second layer");

    // A force pull of an unchanged tag re-checks and changes nothing.
    let again = client.ensure(&reference, true).expect("force again");
    assert_eq!(again, new);
    assert_eq!(leases(&containerd), Vec::<String>::new());
}

#[test]
fn remove_image_collects_content_and_snapshots() {
    let containerd = Containerd::start();
    let registry = Registry::start();
    let reference = registry.push_test_image("hivemind/gone:1");
    let client = Client::new(containerd.socket(), &[registry.addr()]);
    client.pull(&reference);

    assert!(client.remove(&reference).expect("remove"));
    assert_nothing_left(&containerd, "remove_image");
    assert!(!client.remove(&reference).expect("remove again"));
    let err = client.local(&reference).expect_err("removed");
    assert!(matches!(err, ImageError::NotPresent { .. }), "{err:?}");
    assert!(err.to_string().contains("not pulled"), "{err}");
}

/// A registry address that accepts connections and never answers; stops after 60 s.
struct SilentRegistry {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentRegistry {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut held = Vec::new();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok((stream, _)) = listener.accept() {
                        held.push(stream);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Pulls `reference`, expecting an error that `matches` and whose message contains every
/// `needle`, within `limit`; then checks that containerd holds nothing.
fn assert_fails(
    client: &Client,
    containerd: &Containerd,
    reference: &str,
    matches: impl Fn(&ImageError) -> bool,
    needles: &[&str],
    limit: Duration,
) {
    let started = Instant::now();
    let err = match client.ensure(reference, false) {
        Ok(image) => panic!("{reference} pulled: {image:?}"),
        Err(err) => err,
    };
    let elapsed = started.elapsed();
    let message = err.to_string();
    eprintln!("{reference}: {message} ({elapsed:?})");
    assert!(matches(&err), "{reference}: unexpected {err:?}");
    for needle in needles {
        assert!(
            message.contains(needle),
            "{reference}: {needle:?} not in {message:?}"
        );
    }
    assert!(elapsed < limit, "{reference}: took {elapsed:?}");
    assert_nothing_left(containerd, reference);
}

const QUICK: Duration = Duration::from_secs(10);

#[test]
fn malformed_references_and_unknown_images_fail_clearly_and_leave_nothing() {
    let containerd = Containerd::start();
    let registry = Registry::start();
    let good = registry.push_test_image("hivemind/test:1");
    let addr = registry.addr().to_owned();
    let client = Client::new(containerd.socket(), &[&addr]);

    // Malformed references: refused before anything is created.
    for (reference, needle) in [
        ("", "empty"),
        (&*format!("{addr}/Hivemind/Test:1"), "must be lowercase"),
        (&*format!("{addr}/hivemind/test:bad!tag"), "tag \"bad!tag\""),
        (
            &*format!("{addr}/hivemind/test@sha256:1234"),
            "digest \"sha256:1234\"",
        ),
        ("two words", "whitespace"),
    ] {
        assert_fails(
            &client,
            &containerd,
            reference,
            |e| matches!(e, ImageError::Reference(_)),
            &[needle],
            QUICK,
        );
    }

    // Unknown tag and unknown repository: "not found", naming image and registry.
    for reference in [
        format!("{addr}/hivemind/test:nope"),
        format!("{addr}/hivemind/nothing:1"),
    ] {
        assert_fails(
            &client,
            &containerd,
            &reference,
            |e| matches!(e, ImageError::NotFound { .. }),
            &[&reference, &addr, "manifest unknown"],
            QUICK,
        );
    }
    // A digest the registry does not have.
    let missing = format!("{addr}/hivemind/test@sha256:{}", "ab".repeat(32));
    assert_fails(
        &client,
        &containerd,
        &missing,
        |e| matches!(e, ImageError::NotFound { .. }),
        &[&addr],
        QUICK,
    );

    // After all that, a good pull still works.
    client.pull(&good);
}

#[test]
fn unreachable_registries_and_containerd_fail_quickly_and_leave_nothing() {
    let containerd = Containerd::start();
    let registry = Registry::start();
    let good = registry.push_test_image("hivemind/test:1");
    let addr = registry.addr().to_owned();
    let silent = SilentRegistry::start();
    let closed = format!("127.0.0.1:{}", free_port());
    let client = Client::with_options(
        containerd.socket(),
        RegistryOptions {
            insecure: vec![addr.clone(), silent.addr.clone(), closed.clone()],
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            ..RegistryOptions::default()
        },
    );

    // Nothing listening; a host name that does not resolve; a registry that never answers.
    assert_fails(
        &client,
        &containerd,
        &format!("{closed}/hivemind/test:1"),
        |e| matches!(e, ImageError::Unreachable { .. }),
        &[&closed, "unreachable", "connection refused"],
        QUICK,
    );
    assert_fails(
        &client,
        &containerd,
        "no-such-registry.invalid/hivemind/test:1",
        |e| {
            matches!(
                e,
                ImageError::Unreachable { .. } | ImageError::Timeout { .. }
            )
        },
        &["no-such-registry.invalid"],
        QUICK,
    );
    assert_fails(
        &client,
        &containerd,
        &format!("{}/hivemind/test:1", silent.addr),
        |e| matches!(e, ImageError::Timeout { .. }),
        &[&silent.addr, "did not answer within"],
        QUICK,
    );
    drop(silent);

    // A loopback registry given a CA of its own (--registry-ca) is HTTPS only, and a
    // plain-HTTP answer is named as such.
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a CA")
        .cert
        .pem();
    let strict = Client::with_options(
        containerd.socket(),
        RegistryOptions {
            ca: [(addr.clone(), ca.into_bytes())].into(),
            ..RegistryOptions::default()
        },
    );
    assert_fails(
        &strict,
        &containerd,
        &good,
        |e| matches!(e, ImageError::HttpsRequired { .. }),
        &[&format!("--insecure-registry {addr}"), &good],
        QUICK,
    );
    // Without one, a loopback registry not named with --insecure-registry may speak plain
    // HTTP (Docker's rule for local registries).
    Client::new(containerd.socket(), &[])
        .ensure(&good, false)
        .expect("a local plain-HTTP registry");

    // containerd unreachable.
    let dir = tempfile::tempdir().expect("temp dir");
    let nowhere = dir.path().join("containerd.sock");
    let orphan = Client::new(&nowhere, &[&addr]);
    let started = Instant::now();
    let err = orphan.ensure(&good, false).expect_err("no containerd");
    assert!(
        matches!(err, ImageError::ContainerdUnreachable { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&nowhere.display().to_string()),
        "{message}"
    );
    assert!(message.contains(&good), "{message}");
    assert!(started.elapsed() < QUICK);
}

#[test]
fn corrupt_blobs_fail_and_leave_nothing() {
    let containerd = Containerd::start();
    let registry = Registry::start();
    let client = Client::new(containerd.socket(), &[registry.addr()]);

    // A layer whose bytes do not match its digest (same size, one byte changed).
    let reference = registry.push_test_image("hivemind/corrupt:1");
    let (manifest, _) = manifest_and_config(image::oci_layout());
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_owned();
    let path = registry.blob_path(&layer);
    let mut bytes = std::fs::read(&path).expect("registry blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupt the blob");
    assert_fails(
        &client,
        &containerd,
        &reference,
        |e| matches!(e, ImageError::DigestMismatch { .. }),
        &[
            "layer 0",
            &layer,
            registry.addr(),
            "does not match its digest",
        ],
        Duration::from_secs(30),
    );

    // A config that lies about the top layer: fails while unpacking, after the first layer's
    // snapshot was committed. That snapshot, the content and the lease must all go.
    // (A fresh registry: the other one serves the corrupt base layer to every repository.)
    let registry = Registry::start();
    let client = Client::new(containerd.socket(), &[registry.addr()]);
    let dir = tempfile::tempdir().expect("temp dir");
    let lying = layout_with_wrong_diff_id(dir.path(), 1);
    let reference = registry.push_image(&lying, "hivemind/lying:1");
    assert_fails(
        &client,
        &containerd,
        &reference,
        |e| matches!(e, ImageError::DiffIdMismatch { layer: 1, .. }),
        &[&reference, "layer 1"],
        Duration::from_secs(30),
    );
}

/// A copy of the two-layer layout whose config claims a wrong diff id for layer `index`.
fn layout_with_wrong_diff_id(dir: &Path, index: usize) -> PathBuf {
    let source = image::oci_layout_two_layers();
    let layout = dir.join("layout");
    sh(&format!("cp -a {} {}", source.display(), layout.display()));
    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        std::fs::write(layout.join("blobs/sha256").join(hex), bytes).expect("write blob");
        (digest, bytes.len())
    };
    let (mut manifest, mut config) = manifest_and_config(&layout);
    config["rootfs"]["diff_ids"][index] = format!("sha256:{}", "0".repeat(64)).into();
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).expect("config JSON"));
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_size.into();
    let (manifest_digest, manifest_size) =
        put(&serde_json::to_vec(&manifest).expect("manifest JSON"));
    let index_json = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"}
        }]
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index_json).expect("index JSON"),
    )
    .expect("write index.json");
    layout
}

/// A copy of the test image's layout whose tag names an OCI index of two platforms: this
/// machine's (the real manifest) and another (the same blobs, an annotated manifest).
/// Returns (layout, index digest, this platform's manifest digest).
fn layout_with_index(dir: &Path) -> (PathBuf, String, String) {
    let source = image::oci_layout();
    let layout = dir.join("layout");
    sh(&format!("cp -a {} {}", source.display(), layout.display()));
    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        std::fs::write(layout.join("blobs/sha256").join(hex), bytes).expect("write blob");
        (digest, bytes.len())
    };
    let native = image::manifest_digest(&layout);
    let native_size = blob(&layout, &native).len();
    let mut other = json_blob(&layout, &native);
    other["annotations"] = serde_json::json!({"hivemind.test": "other platform"});
    let (other_digest, other_size) = put(&serde_json::to_vec(&other).expect("manifest JSON"));
    let (arch, other_arch) = if std::env::consts::ARCH == "aarch64" {
        ("arm64", "amd64")
    } else {
        ("amd64", "arm64")
    };
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": manifest_type, "digest": other_digest, "size": other_size,
             "platform": {"architecture": other_arch, "os": "linux"}},
            {"mediaType": manifest_type, "digest": native, "size": native_size,
             "platform": {"architecture": arch, "os": "linux"}},
        ]
    });
    let (index_digest, index_size) = put(&serde_json::to_vec(&index).expect("index JSON"));
    let index_json = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest,
            "size": index_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"}
        }]
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index_json).expect("index JSON"),
    )
    .expect("write index.json");
    (layout, index_digest, native)
}

/// The TYPE column of `ctr images ls` for image `name`.
fn ctr_image_type(containerd: &Containerd, name: &str) -> Option<String> {
    containerd
        .ctr_ok(&["-n", NS, "images", "ls"])
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&name))
        .and_then(|cols| cols.get(1).map(|t| (*t).to_owned()))
}

#[test]
fn docker_manifests_and_indexes_pick_this_platform() {
    let containerd = Containerd::start();
    let registry = Registry::start();
    let client = Client::new(containerd.socket(), &[registry.addr()]);
    let dir = tempfile::tempdir().expect("temp dir");
    let (indexed, index_digest, native) = layout_with_index(dir.path());

    // Docker schema 2 manifest (skopeo converts the layout).
    let docker = registry.push_image_with(
        image::oci_layout(),
        "hivemind/docker:1",
        &["--format", "v2s2"],
    );
    let pulled = client.pull(&docker);
    assert_eq!(
        ctr_image_type(&containerd, &docker).as_deref(),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    assert_eq!(
        ctr_image_digest(&containerd, &docker),
        Some(pulled.digest.clone())
    );
    assert_eq!(pulled.config.cmd, ["/bin/entrypoint"]);
    let out = run_in(&containerd, &docker, "cat /www/index.html");
    assert_eq!(out.trim(), "hivemind test image");

    // OCI index: the record points at the index; this platform's manifest is what unpacks.
    let oci_index = registry.push_image_with(&indexed, "hivemind/index:1", &["--all"]);
    let before = content(&containerd).len();
    let pulled = client.pull(&oci_index);
    assert_eq!(pulled.digest, index_digest);
    assert_eq!(pulled.manifest_digest, native);
    assert_eq!(
        ctr_image_type(&containerd, &oci_index).as_deref(),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(
        ctr_image_digest(&containerd, &oci_index),
        Some(index_digest.clone())
    );
    // Only the index and the OCI manifest are new: config and layer are the Docker image's
    // (same bytes). The other platform's manifest is not fetched.
    let after = content(&containerd);
    assert_eq!(after.len(), before + 2, "{after:?}");
    assert!(
        after.contains(&index_digest) && after.contains(&native),
        "{after:?}"
    );
    let info = containerd.ctr_ok(&["-n", NS, "content", "ls"]);
    assert!(
        info.contains(&format!("containerd.io/gc.ref.content.m.0={native}")),
        "{info}"
    );
    collect_garbage(&containerd);
    assert_eq!(
        content(&containerd).len(),
        after.len(),
        "GC keeps the index's content"
    );
    let out = run_in(&containerd, &oci_index, "cat /www/index.html");
    assert_eq!(out.trim(), "hivemind test image");
    assert_eq!(client.local(&oci_index).expect("local"), pulled);

    // Docker manifest list.
    let list =
        registry.push_image_with(&indexed, "hivemind/list:1", &["--all", "--format", "v2s2"]);
    let pulled = client.pull(&list);
    assert_eq!(
        ctr_image_type(&containerd, &list).as_deref(),
        Some("application/vnd.docker.distribution.manifest.list.v2+json")
    );
    assert_eq!(
        ctr_image_digest(&containerd, &list),
        Some(pulled.digest.clone())
    );
    assert_ne!(pulled.digest, pulled.manifest_digest);
    let out = run_in(&containerd, &list, "cat /www/index.html");
    assert_eq!(out.trim(), "hivemind test image");
    assert_eq!(leases(&containerd), Vec::<String>::new());
}

/// The same pull, unpack, GC, cache, removal and failure cleanup against every other containerd
/// release `cargo xtask setup` unpacked (1.7 from Debian 13, 2.x from Debian unstable): the
/// client-side pull uses only APIs that 1.6 through 2.x share.
#[test]
fn other_containerd_releases_pull_run_and_clean_up() {
    let releases = Containerd::other_releases();
    if releases.is_empty() {
        eprintln!(
            "SKIPPED: no other containerd release under {}; `cargo xtask setup` unpacks them",
            hivemind_tests::OTHER_CONTAINERD_RELEASES
        );
        return;
    }
    let registry = Registry::start();
    let single = registry.push_test_image("hivemind/test:1");
    let layered = registry.push_image(image::oci_layout_two_layers(), "hivemind/layered:1");
    let dir = tempfile::tempdir().expect("temp dir");
    let lying = registry.push_image(
        &layout_with_wrong_diff_id(dir.path(), 1),
        "hivemind/lying:1",
    );
    for bin in releases {
        let containerd = Containerd::start_from(&bin);
        let version = containerd.version();
        eprintln!("testing against {version}");
        let client = Client::new(containerd.socket(), &[registry.addr()]);

        let started = Instant::now();
        let base = client.pull(&single);
        eprintln!("{version}: cold pull {:?}", started.elapsed());
        let top = client.pull(&layered);
        assert_eq!(
            ctr_image_digest(&containerd, &layered).as_deref(),
            Some(top.digest.as_str()),
            "{version}"
        );
        assert_eq!(snapshots(&containerd).len(), 2, "{version}: shared base");
        let out = run_in(
            &containerd,
            &layered,
            "cat /www/layer2.html; test -e /data || echo data-gone",
        );
        assert_eq!(lines(&out), ["second layer", "data-gone"], "{version}");

        collect_garbage(&containerd);
        assert_eq!(client.local(&single).expect("local"), base, "{version}");
        assert_eq!(client.local(&layered).expect("local"), top, "{version}");
        let started = Instant::now();
        assert_eq!(client.ensure(&single, false).expect("cached"), base);
        eprintln!("{version}: cached ensure {:?}", started.elapsed());

        let err = client.ensure(&lying, false).expect_err("lying config");
        assert!(
            matches!(err, ImageError::DiffIdMismatch { .. }),
            "{version}: {err:?}"
        );
        assert!(client.remove(&layered).expect("remove"));
        assert!(client.remove(&single).expect("remove"));
        assert_nothing_left(&containerd, &version);
    }
}

#[test]
fn an_image_whose_snapshots_are_gone_is_unpacked_again() {
    let containerd = Containerd::start();
    let registry = Registry::start();
    let reference = registry.push_test_image("hivemind/test:1");
    let client = Client::new(containerd.socket(), &[registry.addr()]);
    let pulled = client.pull(&reference);

    containerd.ctr_ok(&["-n", NS, "snapshots", "rm", &pulled.chain_id]);
    let err = client.local(&reference).expect_err("not unpacked");
    assert!(matches!(err, ImageError::Incomplete { .. }), "{err:?}");
    assert!(err.to_string().contains("not unpacked"), "{err}");

    // Not present in full, so ensure_image pulls: the content is there (nothing downloaded),
    // the layer is unpacked again.
    let (result, events) = client.ensure_with_progress(&reference, false);
    assert_eq!(result.expect("re-unpacked"), pulled);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PullProgress::Layer { cached: true, .. })),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PullProgress::Unpacking { cached: false, .. })),
        "{events:?}"
    );
    let out = run_in(&containerd, &reference, "cat /www/index.html");
    assert_eq!(out.trim(), "hivemind test image");
}
