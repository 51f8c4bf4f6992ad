//! The store against a real etcd: the conformance suite the redb backend passes too (each case
//! with its own etcd), and what only etcd shows — a watch that outlives a member restart, a
//! cluster across namespaces, an unreachable endpoint — plus the `Etcd` fixture's cleanup.

use std::{
    future::Future,
    os::fd::AsRawFd as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use hivemind_agent::store::{
    Compare, Event, EventKind, KeyValue, Op, Store, StoreError, Txn, WatchStream,
};
use hivemind_tests::{
    Agent, AgentOptions, Containerd, Etcd, EtcdOptions, Netns,
    util::{free_port, pid_alive, unique},
    veth,
};
use tokio_stream::StreamExt as _;

#[path = "../../hivemind-agent/src/store/suite.rs"]
mod suite;

async fn etcd_store() -> (Etcd, Store) {
    let etcd = tokio::task::spawn_blocking(Etcd::start)
        .await
        .expect("start etcd");
    let store = Store::connect_etcd(&etcd.endpoints())
        .await
        .unwrap_or_else(|err| panic!("connect to etcd: {err}\n{}", etcd.log()));
    (etcd, store)
}

/// The conformance suite (`hivemind-agent/src/store/suite.rs`) on etcd.
mod store_etcd {
    crate::store_suite!(crate::suite, super::etcd_store().await);
}

#[test]
fn store_etcd_fixture_cleans_up_also_on_panic() {
    let (pid, dir): (u32, PathBuf);
    {
        let etcd = Etcd::start();
        (pid, dir) = (etcd.pid(), etcd.data_dir().to_owned());
        assert!(dir.join("data/member").is_dir(), "etcd wrote its data dir");
    }
    assert!(!pid_alive(pid), "etcd {pid} still runs");
    assert!(!dir.exists(), "{} left behind", dir.display());

    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::panic::catch_unwind(move || {
        let etcd = Etcd::start();
        tx.send((etcd.pid(), etcd.data_dir().to_owned()))
            .expect("send");
        panic!("a failing test");
    });
    assert!(panicked.is_err());
    let (pid, dir) = rx.recv().expect("fixture details");
    assert!(!pid_alive(pid), "etcd {pid} survived the panic");
    assert!(!dir.exists(), "{} survived the panic", dir.display());
}

#[tokio::test]
async fn store_etcd_unreachable_fails_clearly() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let start = Instant::now();
    let err = Store::connect_etcd(std::slice::from_ref(&endpoint))
        .await
        .expect_err("nothing listens there");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains(&endpoint), "{err}");
}

/// A write that etcd neither confirms nor refuses (the member hangs) ends, after the store's
/// ride-through time, as "may have been applied"; a read as a plain timeout; a write to a
/// member that refuses connections as a plain failure (it cannot have been applied). When the
/// member answers again within the time, the call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_etcd_unanswered_writes_are_unconfirmed_refused_ones_failed() {
    let (mut etcd, store) = etcd_store().await;
    store.put("/k", b"before".to_vec()).await.expect("put");

    etcd.freeze();
    let started = Instant::now();
    let err = store
        .put("/k", b"frozen".to_vec())
        .await
        .expect_err("a frozen etcd confirms nothing");
    let waited = started.elapsed();
    assert!(err.is_unconfirmed(), "{err:?}");
    assert!(err.to_string().contains("may have been applied"), "{err}");
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(25)).contains(&waited),
        "gave up after {waited:?}"
    );
    let err = store.get("/k").await.expect_err("nor answers a read");
    assert!(!err.is_unconfirmed() && err.is_unavailable(), "{err:?}");
    let txn = Txn {
        compare: vec![Compare::Absent("/new".into())],
        success: vec![Op::Put {
            key: "/new".into(),
            value: b"1".to_vec(),
            lease: 0,
        }],
        failure: Vec::new(),
    };
    // Thawed while the transaction is being retried: it goes through.
    let thaw = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        etcd.thaw();
    };
    let (outcome, ()) = tokio::join!(store.txn(txn), thaw);
    assert!(outcome.expect("the transaction after the thaw").succeeded);

    etcd.kill();
    let err = store
        .put("/k", b"refused".to_vec())
        .await
        .expect_err("nothing listens");
    assert!(
        !err.is_unconfirmed() && err.is_unavailable(),
        "a refused connection applied nothing: {err:?}"
    );
}

/// A watch keeps going, without a gap, when its etcd member is killed and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_etcd_watch_survives_a_member_restart() {
    let (mut etcd, store) = etcd_store().await;
    let mut watch = store.watch("rs/", 0).await.expect("watch");
    let first = store.put("rs/1", b"1".to_vec()).await.expect("put");
    assert_eq!(next(&mut watch).await.revision(), first);

    tokio::task::block_in_place(|| etcd.restart());
    // The client reconnects by itself; the first requests may still fail.
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        match store.put("rs/2", b"2".to_vec()).await {
            Ok(revision) => break revision,
            Err(err) if Instant::now() < deadline => {
                eprintln!("put after restart: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("etcd did not come back: {err}\n{}", etcd.log()),
        }
    };
    let third = store.put("rs/3", b"3".to_vec()).await.expect("put");
    let (a, b) = (next(&mut watch).await, next(&mut watch).await);
    assert_eq!(
        (
            a.kv.key.as_str(),
            a.revision(),
            b.kv.key.as_str(),
            b.revision()
        ),
        ("rs/2", second, "rs/3", third)
    );
    assert_eq!(a.kind, EventKind::Put);
}

/// Two etcd members in two namespace "hosts" form one cluster; a client in each namespace
/// sees the other's writes. This is what cluster tests build on.
#[test]
fn store_etcd_cluster_across_namespaces() {
    let a = Netns::new("hmsa");
    let b = Netns::new("hmsb");
    veth(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
    let token = unique("hm-cl-");
    let cluster = "ea=http://192.0.2.1:2380,eb=http://192.0.2.2:2380".to_owned();
    let member = |name: &str, ip: &str| EtcdOptions {
        name: Some(name.to_owned()),
        listen_ip: Some(ip.to_owned()),
        initial_cluster: Some(cluster.clone()),
        cluster_token: Some(token.clone()),
        no_wait: true,
        ..EtcdOptions::default()
    };
    let mut ea = Etcd::start_in(&a, &member("ea", "192.0.2.1"));
    let mut eb = Etcd::start_in(&b, &member("eb", "192.0.2.2"));
    ea.wait_healthy(Duration::from_secs(30));
    eb.wait_healthy(Duration::from_secs(30));
    assert_eq!(ea.client_url(), "http://192.0.2.1:2379");

    let written = in_netns(&a, ea.endpoints(), |store| async move {
        store
            .put("cl/x", b"from a".to_vec())
            .await
            .expect("put in a")
    });
    let seen = in_netns(&b, eb.endpoints(), |store| async move {
        store
            .get("cl/x")
            .await
            .expect("get in b")
            .expect("replicated")
    });
    assert_eq!(
        (seen.value.as_slice(), seen.mod_revision),
        (&b"from a"[..], written)
    );
    let status = in_netns(
        &b,
        eb.endpoints(),
        |store| async move { store.status().await },
    );
    assert!(status.ok && status.backend == "etcd", "{status:?}");
}

/// `--etcd-endpoints` makes the agent keep its state in etcd instead of its redb file, and
/// `hivemind health` says so.
#[test]
fn store_agent_uses_etcd_when_given_endpoints() {
    let ns = Netns::new("hmsag");
    let etcd = Etcd::start_in(&ns, &EtcdOptions::default());
    let containerd = Containerd::start();
    let agent = Agent::start(
        &ns,
        &containerd,
        &AgentOptions {
            extra_args: vec!["--etcd-endpoints".into(), etcd.client_url().into()],
            ..AgentOptions::default()
        },
    );
    let health = agent.cli_json(&["health"]);
    assert_eq!(health["store"]["backend"], "etcd", "{health}");
    assert_eq!(health["store"]["location"], etcd.client_url(), "{health}");
    assert_eq!(health["store"]["ok"], true, "{health}");
    assert!(
        !agent.data_dir().join("state.redb").exists(),
        "no redb file with etcd"
    );

    // With etcd gone, health reports the store down (and exits non-zero) within its probe time.
    drop(etcd);
    let out = agent.cli(&["-o", "json", "health"]);
    assert!(!out.status.success(), "health must fail without etcd");
    let health: serde_json::Value = serde_json::from_slice(&out.stdout).expect("health JSON");
    assert_eq!(health["store"]["ok"], false, "{health}");
    assert_ne!(health["store"]["error"], "", "{health}");
}

async fn next(watch: &mut WatchStream) -> Event {
    match tokio::time::timeout(Duration::from_secs(20), watch.next()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Runs `body` with a store connected to `endpoints` from inside `netns`: on a thread of its
/// own that enters the namespace first (setns is per thread), with its own runtime, so every
/// socket it opens belongs to that namespace.
fn in_netns<F, Fut, T>(netns: &Netns, endpoints: Vec<String>, body: F) -> T
where
    F: FnOnce(Store) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = netns.path();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|err| panic!("open {path}: {err}"));
        // SAFETY: setns(2) on a valid namespace fd we own; it changes only this thread's
        // network namespace, and this thread ends with the closure.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let store = Store::connect_etcd(&endpoints)
                .await
                .unwrap_or_else(|err| panic!("connect to {endpoints:?}: {err}"));
            body(store).await
        })
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
