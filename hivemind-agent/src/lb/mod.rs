//! Service VIPs: every app gets a stable virtual address from the service CIDR, and a connect
//! to it from a container (or any process in the balanced cgroup) is sent to one of the app's
//! healthy replicas, anywhere in the cluster, by the `hivemind-lb` socket programs.
//!
//! [`alloc`] claims and frees the addresses in the store; the balancer task here keeps the
//! programs' maps equal to "VIP → healthy replicas", following the store (apps, containers,
//! health verdicts, node liveness) through a watch plus a periodic resync.

pub mod alloc;
mod kernel;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::StreamExt as _;
use ipnet::Ipv4Net;

pub use alloc::AllocError;
pub use kernel::{LbError, SocketLb};

use crate::{
    model::{AppSpec, ContainerRecord},
    state::State,
    store::StoreError,
};

/// The maps are rebuilt from the store at least this often, whatever the watch delivered.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Changes arriving within this window are applied together.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// The replicas of `app` that a VIP (and any other service mechanism) may send traffic to:
/// running, with an address, healthy when the app has a health check, on a node that is up.
/// `records` may hold every app's containers, from every node.
pub fn healthy_backends(
    app: &AppSpec,
    records: &[ContainerRecord],
    ready_nodes: &BTreeSet<String>,
) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = records
        .iter()
        .filter(|r| {
            r.app == app.name && crate::service::records::serves(r) && ready_nodes.contains(&r.node)
        })
        .filter_map(|r| r.ip)
        .collect();
    ips.sort_unstable();
    ips.dedup();
    ips
}

/// What the API needs: the VIPs in the store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Vips {
    state: State,
    cidr: Ipv4Net,
}

impl Vips {
    pub fn new(state: State, cidr: Ipv4Net) -> Self {
        Self { state, cidr }
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The app's VIP, claimed now if it has none yet.
    pub async fn ensure(&self, app: &str) -> Result<Ipv4Addr, AllocError> {
        alloc::ensure(&self.state, self.cidr, app).await
    }

    pub async fn of(&self, app: &str) -> Result<Option<Ipv4Addr>, StoreError> {
        alloc::vip(&self.state, app).await
    }

    /// Frees the app's VIP now (after a failed deploy), rather than at the balancer's next
    /// sweep of apps that are gone.
    pub async fn release(&self, app: &str) -> Result<(), StoreError> {
        if let Some(ip) = self.of(app).await? {
            alloc::release(&self.state, app, ip).await?;
        }
        Ok(())
    }

    pub async fn all(&self) -> Result<BTreeMap<String, Ipv4Addr>, StoreError> {
        alloc::vips(&self.state).await
    }
}

/// Where the programs attach when `--vip-cgroup` is not given: the cgroup (v2) directory that
/// holds this node's containers (`runtime` puts them in `/hivemind/<node>/<id>`).
pub fn default_cgroup(node: &str) -> Result<PathBuf, LbError> {
    let root = cgroup2_mount().ok_or_else(|| LbError::Cgroup {
        path: PathBuf::from("/proc/self/mountinfo"),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no cgroup v2 hierarchy is mounted (socket load balancing needs one; \
             hybrid setups mount it at /sys/fs/cgroup/unified)",
        ),
    })?;
    Ok(root.join(crate::paths::cgroup_parent(node).trim_start_matches('/')))
}

/// The cgroup v2 mount point, `/sys/fs/cgroup` preferred.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect();
    found.sort_by_key(|p| p != Path::new("/sys/fs/cgroup"));
    found.into_iter().next()
}

/// Loads the programs (failing the start if the kernel refuses them), attaches them to
/// `cgroup` (created if missing), and spawns the task that keeps the maps current.
pub fn start(
    state: State,
    cidr: Ipv4Net,
    node: &str,
    pin_dir: &Path,
    cgroup: &Path,
) -> Result<Vips, LbError> {
    let mut lb = SocketLb::load(pin_dir)?;
    std::fs::create_dir_all(cgroup).map_err(|source| LbError::Cgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    lb.attach(cgroup)?;
    let vips = Vips::new(state, cidr);
    tokio::spawn(run(vips.clone(), node.to_owned(), lb));
    Ok(vips)
}

async fn run(vips: Vips, node: String, mut lb: SocketLb) {
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = None;
    loop {
        if watch.is_none() {
            match vips.state.store().watch("/hivemind/", 0).await {
                Ok(stream) => watch = Some(stream),
                Err(err) => tracing::debug!("VIP balancer: watching the store: {err}"),
            }
            // Whatever changed while there was no watch is picked up by this sync.
            sync_logged(&vips, &node, &mut lb).await;
        }
        tokio::select! {
            event = async {
                match watch.as_mut() {
                    Some(stream) => stream.next().await,
                    None => std::future::pending().await,
                }
            } => match event {
                Some(Ok(event)) if is_relevant(&event.kv.key) => {
                    tokio::time::sleep(DEBOUNCE).await;
                    sync_logged(&vips, &node, &mut lb).await;
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    tracing::debug!("VIP balancer: watch ended: {err}");
                    watch = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => {
                    watch = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = tick.tick() => sync_logged(&vips, &node, &mut lb).await,
        }
    }
}

fn is_relevant(key: &str) -> bool {
    use crate::model::keys;
    [
        keys::APPS,
        keys::CONTAINERS,
        keys::NODES,
        keys::LIVENESS,
        keys::VIPS_BY_APP,
    ]
    .iter()
    .any(|prefix| key.starts_with(prefix))
}

async fn sync_logged(vips: &Vips, node: &str, lb: &mut SocketLb) {
    if let Err(err) = sync(vips, node, lb).await {
        tracing::warn!(
            "updating the VIP maps: {}",
            crate::error_chain(err.as_ref())
        );
    }
}

/// One full pass: VIPs for apps that lack one, VIPs of removed apps released, and the maps
/// set to every app's healthy replicas.
async fn sync(
    vips: &Vips,
    node: &str,
    lb: &mut SocketLb,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let state = &vips.state;
    // VIPs before apps: a VIP whose app is missing afterwards belonged to a removed app.
    let mut allocated = vips.all().await?;
    let apps = state.apps().await?;
    let records = state.containers().await?;
    let ready: BTreeSet<String> = state
        .cluster_nodes(node)
        .await?
        .into_iter()
        .filter_map(|(name, ready)| ready.then_some(name))
        .collect();

    for (app, ip) in allocated.clone() {
        if !apps.iter().any(|a| a.name == app) {
            alloc::release(state, &app, ip).await?;
            allocated.remove(&app);
        }
    }
    let mut wanted = BTreeMap::new();
    for app in &apps {
        let vip = match allocated.get(&app.name) {
            Some(ip) => *ip,
            None => match vips.ensure(&app.name).await {
                Ok(ip) => ip,
                Err(err) => {
                    tracing::warn!(app = %app.name, "{err}");
                    continue;
                }
            },
        };
        wanted.insert(vip, healthy_backends(app, &records, &ready));
    }
    lb.set_services(&wanted)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerState, Health};

    fn record(
        app: &str,
        ip: u8,
        node: &str,
        state: ContainerState,
        health: Option<Health>,
    ) -> ContainerRecord {
        ContainerRecord {
            id: format!("{app}-{ip}"),
            app: app.into(),
            slot: 0,
            node: node.into(),
            generation: 1,
            image: String::new(),
            image_digest: String::new(),
            state,
            exit_code: None,
            restart_count: 0,
            pid: 0,
            ip: Some(Ipv4Addr::new(10, 244, 0, ip)),
            created_at_ms: 0,
            started_at_ms: None,
            history: Vec::new(),
            health,
            health_detail: String::new(),
            ..ContainerRecord::default()
        }
    }

    #[test]
    fn only_healthy_running_replicas_on_ready_nodes() {
        let app: AppSpec = serde_json::from_value(serde_json::json!({
            "name": "web", "image": "i", "service": null, "replicas": 3, "env": {},
            "ports": [], "volumes": [], "labels": {}, "memory_bytes": null, "cpu_millis": null,
            "stop_timeout_secs": 10, "generation": 1, "created_at_ms": 0, "updated_at_ms": 0
        }))
        .expect("app");
        let records = [
            record("web", 2, "a", ContainerState::Running, None),
            record(
                "web",
                3,
                "a",
                ContainerState::Running,
                Some(Health::Healthy),
            ),
            record(
                "web",
                4,
                "a",
                ContainerState::Running,
                Some(Health::Unhealthy),
            ),
            record(
                "web",
                5,
                "a",
                ContainerState::Running,
                Some(Health::Starting),
            ),
            record("web", 6, "a", ContainerState::Exited, None),
            record("web", 7, "down", ContainerState::Running, None),
            record("db", 8, "a", ContainerState::Running, None),
        ];
        let ready = BTreeSet::from(["a".to_owned()]);
        assert_eq!(
            healthy_backends(&app, &records, &ready),
            vec![Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3)]
        );
    }
}
