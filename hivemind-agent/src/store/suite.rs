//! The store's conformance suite: every backend must pass it, so the redb backend keeps etcd's
//! semantics. Each case takes a fresh, empty store.
//!
//! The same file is compiled twice: into the agent's unit tests (redb, `store::redb::tests`)
//! and into `tests/tests/store.rs` (a real etcd, root-only harness), which includes it with
//! `#[path]` and uses only the public API. [`store_suite!`] turns it into test functions.

use std::{collections::HashSet, time::Duration};

use tokio_stream::StreamExt as _;

use super::{Compare, Event, EventKind, KeyValue, Op, Store, StoreError, Txn, WatchStream};

/// Expands to one `#[tokio::test]` per suite case. `$suite` is the path of this module, `$open`
/// an expression (awaited inside the test) giving `(guard, Store)`: a fresh, empty store, and
/// whatever must live as long as it (a temp dir, an etcd process).
#[macro_export]
macro_rules! store_suite {
    ($suite:path, $open:expr) => {
        $crate::store_suite!(@cases $suite, $open;
            get_put_delete,
            range_by_prefix,
            revisions,
            txn_branches,
            txn_errors,
            create_if_absent_race,
            watch_from_now,
            watch_replays_then_follows,
            watch_ignores_other_prefixes,
            lease_expiry,
            lease_keep_alive,
            lease_revoke,
            compaction,
            json_helpers,
            status_ok,
        );
    };
    (@cases $suite:path, $open:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                use $suite as suite;
                let (_guard, store) = $open;
                suite::$case(store).await;
            }
        )+
    };
}

/// Long enough for etcd's lease checks (every 500 ms) and a loaded machine.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

async fn next_event(watch: &mut WatchStream) -> Event {
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(err))) => panic!("watch failed: {err}"),
        Ok(None) => panic!("watch ended"),
        Err(elapsed) => panic!("no event: {elapsed} ({EVENT_TIMEOUT:?})"),
    }
}

/// Asserts that nothing arrives for a short while.
async fn assert_quiet(watch: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        panic!("expected no event, got {item:?}");
    }
}

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.into(),
        value: value.to_vec(),
        lease: 0,
    }
}

pub async fn get_put_delete(store: Store) {
    assert_eq!(store.get("gpd/k").await.expect("get"), None);
    let first = store.put("gpd/k", b"v1".to_vec()).await.expect("put");
    let kv = store.get("gpd/k").await.expect("get").expect("present");
    assert_eq!(kv.key, "gpd/k");
    assert_eq!(kv.value, b"v1");
    assert_eq!((kv.create_revision, kv.mod_revision), (first, first));
    assert_eq!(kv.lease, 0);

    let second = store.put("gpd/k", b"v2".to_vec()).await.expect("put");
    assert!(second > first);
    let kv = store.get("gpd/k").await.expect("get").expect("present");
    assert_eq!(kv.value, b"v2");
    assert_eq!((kv.create_revision, kv.mod_revision), (first, second));

    assert!(store.delete("gpd/k").await.expect("delete"));
    assert_eq!(store.get("gpd/k").await.expect("get"), None);
    let (_, after_delete) = store.range("").await.expect("range");
    assert_eq!(after_delete, second + 1, "a delete is a write");
    assert!(!store.delete("gpd/k").await.expect("delete again"));
    let (_, revision) = store.range("").await.expect("range");
    assert_eq!(revision, after_delete, "deleting nothing is not a write");

    // Re-creating starts a new life: a new create revision.
    let third = store.put("gpd/k", b"v3".to_vec()).await.expect("put");
    let kv = store.get("gpd/k").await.expect("get").expect("present");
    assert_eq!(kv.create_revision, third);

    assert!(matches!(
        store.put("", vec![]).await,
        Err(StoreError::InvalidKey { .. })
    ));
}

pub async fn range_by_prefix(store: Store) {
    for key in ["a/2", "b/1", "a/1", "ab/1", "a", "a/1/x"] {
        store.put(key, key.as_bytes().to_vec()).await.expect("put");
    }
    let last = store.put("a/3", b"a/3".to_vec()).await.expect("put");

    let (kvs, revision) = store.range("a/").await.expect("range");
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["a/1", "a/1/x", "a/2", "a/3"],
        "sorted, and not ab/ or a"
    );
    assert_eq!(revision, last);
    assert!(kvs.iter().all(|kv| kv.value == kv.key.as_bytes()));

    let (kvs, _) = store.range("ab/").await.expect("range");
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].key, "ab/1");

    let (all, _) = store.range("").await.expect("range all");
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));

    let (none, _) = store.range("zzz/").await.expect("range nothing");
    assert_eq!(none, Vec::<KeyValue>::new());
}

pub async fn revisions(store: Store) {
    let x = store.put("rev/x", vec![1]).await.expect("put");
    let y = store.put("rev/y", vec![2]).await.expect("put");
    assert_eq!(y, x + 1, "one revision per write");

    let outcome = store
        .txn(Txn {
            success: vec![put("rev/x", b"3"), put("rev/z", b"4")],
            ..Txn::default()
        })
        .await
        .expect("txn");
    assert!(outcome.succeeded);
    assert_eq!(outcome.revision, y + 1, "a transaction is one revision");

    let (kvs, revision) = store.range("rev/").await.expect("range");
    assert_eq!(revision, y + 1);
    let by_key = |key: &str| {
        kvs.iter()
            .find(|kv| kv.key == key)
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    assert_eq!(
        (
            by_key("rev/x").create_revision,
            by_key("rev/x").mod_revision
        ),
        (x, y + 1)
    );
    assert_eq!(
        (
            by_key("rev/y").create_revision,
            by_key("rev/y").mod_revision
        ),
        (y, y)
    );
    assert_eq!(
        (
            by_key("rev/z").create_revision,
            by_key("rev/z").mod_revision
        ),
        (y + 1, y + 1)
    );
}

pub async fn txn_branches(store: Store) {
    let create = |value: &[u8]| Txn {
        compare: vec![Compare::Absent("tx/k".into())],
        success: vec![put("tx/k", value)],
        failure: vec![put("tx/lost", value)],
    };
    let won = store.txn(create(b"first")).await.expect("txn");
    assert!(won.succeeded);
    let lost = store.txn(create(b"second")).await.expect("txn");
    assert!(!lost.succeeded);
    assert_eq!(lost.revision, won.revision + 1, "the failure branch wrote");
    assert_eq!(
        store.get("tx/k").await.expect("get").expect("k").value,
        b"first"
    );
    assert_eq!(
        store
            .get("tx/lost")
            .await
            .expect("get")
            .expect("lost")
            .value,
        b"second"
    );

    // ModRevision: compare-and-swap on the version a reader saw.
    let seen = store
        .get("tx/k")
        .await
        .expect("get")
        .expect("k")
        .mod_revision;
    let swap = |expected, value: &[u8]| Txn {
        compare: vec![Compare::ModRevision("tx/k".into(), expected)],
        success: vec![put("tx/k", value)],
        failure: vec![],
    };
    let swapped = store.txn(swap(seen, b"swapped")).await.expect("txn");
    assert!(swapped.succeeded);
    let stale = store.txn(swap(seen, b"stale")).await.expect("txn");
    assert!(!stale.succeeded);
    assert_eq!(
        stale.revision, swapped.revision,
        "an empty branch is not a write"
    );
    assert_eq!(
        store.get("tx/k").await.expect("get").expect("k").value,
        b"swapped"
    );
    // ModRevision 0 matches a missing key, as in etcd.
    let fresh = Txn {
        compare: vec![Compare::ModRevision("tx/new".into(), 0)],
        success: vec![put("tx/new", b"1")],
        failure: vec![],
    };
    assert!(store.txn(fresh).await.expect("txn").succeeded);

    // Value: several comparisons must all hold.
    let by_value = |value: &[u8]| Txn {
        compare: vec![
            Compare::Value("tx/k".into(), value.to_vec()),
            Compare::Absent("tx/nothing".into()),
        ],
        success: vec![
            Op::Delete {
                key: "tx/lost".into(),
            },
            Op::DeletePrefix {
                prefix: "tx/new".into(),
            },
        ],
        failure: vec![],
    };
    assert!(!store.txn(by_value(b"other")).await.expect("txn").succeeded);
    assert!(store.get("tx/lost").await.expect("get").is_some());
    let deleted = store.txn(by_value(b"swapped")).await.expect("txn");
    assert!(deleted.succeeded);
    assert!(store.get("tx/lost").await.expect("get").is_none());
    assert!(store.get("tx/new").await.expect("get").is_none());
    // A Value comparison on a missing key fails.
    let missing = Txn {
        compare: vec![Compare::Value("tx/missing".into(), vec![])],
        ..Txn::default()
    };
    assert!(!store.txn(missing).await.expect("txn").succeeded);

    // Both deletes happened at one revision.
    let mut watch = store.watch("tx/", deleted.revision).await.expect("watch");
    let (a, b) = (next_event(&mut watch).await, next_event(&mut watch).await);
    assert_eq!(
        (a.kind, b.kind, a.revision(), b.revision()),
        (
            EventKind::Delete,
            EventKind::Delete,
            deleted.revision,
            deleted.revision
        )
    );
}

pub async fn txn_errors(store: Store) {
    store.put("te/k", b"v".to_vec()).await.expect("put");
    let (_, before) = store.range("").await.expect("range");
    let twice = Txn {
        success: vec![put("te/a", b"1"), put("te/a", b"2")],
        ..Txn::default()
    };
    assert!(matches!(
        store.txn(twice).await,
        Err(StoreError::InvalidTxn { .. })
    ));
    let unknown_lease = Txn {
        success: vec![
            put("te/b", b"1"),
            Op::Put {
                key: "te/c".into(),
                value: vec![],
                lease: 0x7fff_0000_0000_0001,
            },
        ],
        ..Txn::default()
    };
    assert!(matches!(
        store.txn(unknown_lease).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
    let (kvs, after) = store.range("").await.expect("range");
    assert_eq!(after, before, "a rejected transaction writes nothing");
    assert_eq!(kvs.len(), 1);
}

pub async fn create_if_absent_race(store: Store) {
    const CONTENDERS: usize = 8;
    for round in 0..3 {
        let key = format!("race/{round}");
        let tasks: Vec<_> = (0..CONTENDERS)
            .map(|i| {
                let store = store.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let outcome = store
                        .txn(Txn {
                            compare: vec![Compare::Absent(key.clone())],
                            success: vec![put(&key, i.to_string().as_bytes())],
                            failure: vec![],
                        })
                        .await
                        .expect("txn");
                    (i, outcome.succeeded)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (i, won) = task.await.expect("join");
            if won {
                winners.push(i);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one winner, got {winners:?}");
        let value = store.get(&key).await.expect("get").expect("present").value;
        assert_eq!(value, winners[0].to_string().as_bytes());
    }
}

pub async fn watch_from_now(store: Store) {
    store.put("w/old", b"old".to_vec()).await.expect("put");
    let mut watch = store.watch("w/", 0).await.expect("watch");
    let put1 = store.put("w/1", b"one".to_vec()).await.expect("put");
    store.put("other/1", vec![]).await.expect("put");
    assert!(store.delete("w/1").await.expect("delete"));
    let txn = store
        .txn(Txn {
            success: vec![put("w/2", b"two"), put("w/3", b"three")],
            ..Txn::default()
        })
        .await
        .expect("txn");

    let event = next_event(&mut watch).await;
    assert_eq!(event.kind, EventKind::Put, "not the old key: {event:?}");
    assert_eq!(event.kv.key, "w/1");
    assert_eq!(event.kv.value, b"one");
    assert_eq!(
        (event.kv.create_revision, event.kv.mod_revision),
        (put1, put1)
    );

    let event = next_event(&mut watch).await;
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(event.kv.key, "w/1");
    assert_eq!(event.kv.mod_revision, put1 + 2, "the deleting revision");

    let (a, b) = (next_event(&mut watch).await, next_event(&mut watch).await);
    assert_eq!((a.kv.key.as_str(), b.kv.key.as_str()), ("w/2", "w/3"));
    assert_eq!((a.revision(), b.revision()), (txn.revision, txn.revision));
    assert_quiet(&mut watch).await;
}

/// A watch from a past revision while writes go on: the replayed history and the live events
/// must join without a gap or a duplicate.
pub async fn watch_replays_then_follows(store: Store) {
    const WRITES: usize = 200;
    let (written_tx, mut written) = tokio::sync::mpsc::unbounded_channel();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..WRITES {
                let revision = store
                    .put(&format!("rp/{i:04}"), i.to_string().into_bytes())
                    .await
                    .expect("put");
                let _ = written_tx.send(revision);
            }
        })
    };
    let mut revisions = Vec::new();
    while revisions.len() < 20 {
        revisions.push(written.recv().await.expect("writer running"));
    }
    let from = revisions[10];
    let mut watch = store.watch("rp/", from).await.expect("watch");
    writer.await.expect("writer");
    while let Ok(revision) = written.try_recv() {
        revisions.push(revision);
    }
    assert_eq!(revisions.len(), WRITES);

    let mut seen = Vec::new();
    for expected in &revisions[10..] {
        let event = next_event(&mut watch).await;
        assert_eq!(event.kind, EventKind::Put);
        assert_eq!(
            event.revision(),
            *expected,
            "after {} events from {from}",
            seen.len()
        );
        seen.push(event.kv.key);
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    assert_eq!(seen.first().map(String::as_str), Some("rp/0010"));
    assert_quiet(&mut watch).await;

    // Live events keep coming after the replay.
    let live = store.put("rp/live", vec![]).await.expect("put");
    assert_eq!(next_event(&mut watch).await.revision(), live);
}

pub async fn watch_ignores_other_prefixes(store: Store) {
    let mut watch = store.watch("a/", 0).await.expect("watch");
    let mut past_from = 0;
    for key in ["ab/x", "b/x", "a", "aa/x"] {
        let revision = store.put(key, vec![]).await.expect("put");
        if past_from == 0 {
            past_from = revision;
        }
    }
    let wanted = store.put("a/x", vec![]).await.expect("put");
    let event = next_event(&mut watch).await;
    assert_eq!(event.kv.key, "a/x");
    assert_eq!(event.revision(), wanted);
    assert_quiet(&mut watch).await;

    // The same on replay.
    let mut replay = store.watch("a/", past_from).await.expect("watch");
    assert_eq!(next_event(&mut replay).await.kv.key, "a/x");
    assert_quiet(&mut replay).await;
}

/// etcd's minimum lease TTL with default timing is 2 s; use it for both backends.
const TTL: Duration = Duration::from_secs(2);

pub async fn lease_expiry(store: Store) {
    let lease = store.grant_lease(TTL).await.expect("grant");
    assert_ne!(lease, 0);
    let granted = tokio::time::Instant::now();
    store
        .put_with_lease("le/k", b"v".to_vec(), lease)
        .await
        .expect("put with lease");
    store.put("le/stays", vec![]).await.expect("put");
    assert_eq!(
        store
            .get("le/k")
            .await
            .expect("get")
            .expect("present")
            .lease,
        lease
    );
    let mut watch = store.watch("le/", 0).await.expect("watch");
    let event = next_event(&mut watch).await;
    assert!(
        granted.elapsed() >= TTL.saturating_sub(Duration::from_millis(100)),
        "expired early"
    );
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(event.kv.key, "le/k");
    assert!(store.get("le/k").await.expect("get").is_none());
    assert!(
        store.get("le/stays").await.expect("get").is_some(),
        "keys without the lease stay"
    );
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseExpired { .. })
    ));
}

pub async fn lease_keep_alive(store: Store) {
    let lease = store.grant_lease(TTL).await.expect("grant");
    store
        .put_with_lease("lk/k", vec![], lease)
        .await
        .expect("put with lease");
    let start = tokio::time::Instant::now();
    while start.elapsed() < TTL * 2 {
        store.keep_alive(lease).await.expect("keep alive");
        tokio::time::sleep(TTL / 4).await;
    }
    assert!(
        store.get("lk/k").await.expect("get").is_some(),
        "kept alive for twice its TTL"
    );
    let mut watch = store.watch("lk/", 0).await.expect("watch");
    let event = next_event(&mut watch).await;
    assert_eq!(
        (event.kind, event.kv.key.as_str()),
        (EventKind::Delete, "lk/k")
    );
}

pub async fn lease_revoke(store: Store) {
    let lease = store
        .grant_lease(Duration::from_secs(600))
        .await
        .expect("grant");
    for key in ["lr/a", "lr/b"] {
        store
            .put_with_lease(key, vec![], lease)
            .await
            .expect("put with lease");
    }
    store.put("lr/free", vec![]).await.expect("put");
    // A put without the lease detaches the key from it.
    store
        .put_with_lease("lr/moved", vec![], lease)
        .await
        .expect("put");
    store.put("lr/moved", vec![1]).await.expect("put");

    let mut watch = store.watch("lr/", 0).await.expect("watch");
    store.revoke_lease(lease).await.expect("revoke");
    let (a, b) = (next_event(&mut watch).await, next_event(&mut watch).await);
    assert_eq!((a.kind, b.kind), (EventKind::Delete, EventKind::Delete));
    assert_eq!((a.kv.key.as_str(), b.kv.key.as_str()), ("lr/a", "lr/b"));
    assert_eq!(
        a.revision(),
        b.revision(),
        "one revision for the revocation"
    );
    assert_quiet(&mut watch).await;
    let (left, _) = store.range("lr/").await.expect("range");
    let keys: Vec<&str> = left.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["lr/free", "lr/moved"]);

    assert!(matches!(
        store.revoke_lease(lease).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
    assert!(matches!(
        store.put_with_lease("lr/c", vec![], lease).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
    // A lease without keys revokes without a write.
    let empty = store
        .grant_lease(Duration::from_secs(600))
        .await
        .expect("grant");
    let (_, before) = store.range("").await.expect("range");
    store.revoke_lease(empty).await.expect("revoke");
    let (_, after) = store.range("").await.expect("range");
    assert_eq!(before, after);
}

pub async fn compaction(store: Store) {
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(store.put(&format!("c/{i}"), vec![]).await.expect("put"));
    }
    store.compact(revisions[3]).await.expect("compact");
    store
        .compact(revisions[1])
        .await
        .expect("compacting less is a no-op");

    let mut watch = store.watch("c/", revisions[2]).await.expect("watch");
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Err(StoreError::Compacted {
            compact_revision, ..
        }))) => assert_eq!(compact_revision, revisions[3]),
        other => panic!("expected Compacted, got {other:?}"),
    }
    let ended = tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the stream ends after Compacted: {ended:?}"
    );

    let mut watch = store.watch("c/", revisions[3]).await.expect("watch");
    assert_eq!(next_event(&mut watch).await.kv.key, "c/3");
    assert_eq!(next_event(&mut watch).await.kv.key, "c/4");

    let (kvs, _) = store.range("c/").await.expect("range");
    assert_eq!(kvs.len(), 5, "compaction keeps current keys");
    assert!(matches!(
        store.compact(revisions[4] + 100).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct App {
    name: String,
    replicas: u32,
}

pub async fn json_helpers(store: Store) {
    let web = App {
        name: "web".into(),
        replicas: 3,
    };
    let revision = store.put_json("apps/web", &web).await.expect("put json");
    let entry = store
        .get_json::<App>("apps/web")
        .await
        .expect("get json")
        .expect("present");
    assert_eq!(entry.value, web);
    assert_eq!(
        (entry.key.as_str(), entry.mod_revision),
        ("apps/web", revision)
    );

    let op = Op::put_json(
        "apps/db",
        &App {
            name: "db".into(),
            replicas: 1,
        },
        0,
    )
    .expect("encode");
    store
        .txn(Txn {
            compare: vec![Compare::Absent("apps/db".into())],
            success: vec![op],
            failure: vec![],
        })
        .await
        .expect("txn");
    let (apps, _) = store.range_json::<App>("apps/").await.expect("range json");
    let names: Vec<&str> = apps.iter().map(|e| e.value.name.as_str()).collect();
    assert_eq!(names, ["db", "web"]);

    store
        .put("apps/broken", b"not json".to_vec())
        .await
        .expect("put");
    match store.range_json::<App>("apps/").await {
        Err(err @ StoreError::Decode { .. }) => {
            assert!(err.to_string().contains("apps/broken"), "{err}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}

pub async fn status_ok(store: Store) {
    let status = store.status().await;
    assert!(status.ok, "{status:?}");
    assert!(
        status.backend == "redb" || status.backend == "etcd",
        "{status:?}"
    );
    assert_ne!(status.location, "");
}
