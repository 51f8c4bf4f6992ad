//! The service table: which names belong to which app, and which replicas serve it. Derived
//! from the store (apps, containers, node liveness) and rebuilt on every change a watch
//! delivers, so each node of a cluster sees the same table without any node-local state.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use futures_util::FutureExt as _;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

use crate::{
    model::{AppSpec, ContainerRecord, Probe, Protocol, keys},
    state::State,
    store::StoreError,
};

/// The container port the router sends HTTP to when the app publishes none and has no HTTP
/// health check.
pub const DEFAULT_HTTP_PORT: u16 = 80;

/// One app as service discovery sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub app: String,
    /// `<app>.<suffix>` first, then the `--service` domain if any.
    pub names: Vec<String>,
    /// The container port HTTP is routed to (see [`http_port`]).
    pub port: u16,
    /// Addresses of the replicas that serve, sorted.
    pub endpoints: Vec<Ipv4Addr>,
}

/// What a name is to service discovery.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A service's name.
    Service(&'a Service),
    /// Under the suffix or a service domain, but no such name: NXDOMAIN.
    Unknown,
    /// Not ours: forward it.
    Outside,
}

/// Every service, by app and by name.
#[derive(Debug, Default)]
pub struct ServiceTable {
    suffix: String,
    services: BTreeMap<String, Service>,
    /// Lowercase name without the trailing dot → app.
    by_name: HashMap<String, String>,
}

impl ServiceTable {
    /// The table for these records. `ready_nodes`: nodes whose containers count (`None`: all,
    /// a node that never joined a cluster).
    pub fn build(
        suffix: &str,
        apps: &[AppSpec],
        containers: &[ContainerRecord],
        ready_nodes: Option<&BTreeSet<String>>,
    ) -> Self {
        let mut table = Self {
            suffix: suffix.to_owned(),
            ..Self::default()
        };
        for app in apps {
            let mut endpoints: Vec<Ipv4Addr> = containers
                .iter()
                .filter(|r| r.app == app.name)
                .filter(|r| ready_nodes.is_none_or(|nodes| nodes.contains(&r.node)))
                .filter(|r| serves(r))
                .filter_map(|r| r.ip)
                .collect();
            endpoints.sort_unstable();
            endpoints.dedup();
            let names = names_of(app, suffix);
            for name in &names {
                // The deploy check keeps names unique; on a conflict the first app wins.
                table
                    .by_name
                    .entry(name.clone())
                    .or_insert_with(|| app.name.clone());
            }
            table.services.insert(
                app.name.clone(),
                Service {
                    app: app.name.clone(),
                    names,
                    port: http_port(app),
                    endpoints,
                },
            );
        }
        table
    }

    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    pub fn service(&self, app: &str) -> Option<&Service> {
        self.services.get(app)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// What `name` (any case, with or without the trailing dot) is.
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        let name = normalize(name);
        if let Some(service) = self
            .by_name
            .get(name.as_str())
            .and_then(|app| self.services.get(app))
        {
            return Lookup::Service(service);
        }
        let under = |zone: &str| name == zone || name.ends_with(&format!(".{zone}"));
        if under(&self.suffix) || self.by_name.keys().any(|zone| under(zone)) {
            Lookup::Unknown
        } else {
            Lookup::Outside
        }
    }
}

/// Lowercase, without the trailing dot: how names are compared.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Label of a stack's apps (`hivemind stack deploy`): the stack's name.
pub const STACK_LABEL: &str = "hivemind.stack";
/// Label of a stack's apps: the Compose service the app is.
pub const STACK_SERVICE_LABEL: &str = "hivemind.stack.service";

/// The stack and Compose service of a stack's app.
pub fn stack_of(app: &AppSpec) -> Option<(&str, &str)> {
    Some((
        app.labels.get(STACK_LABEL)?.as_str(),
        app.labels.get(STACK_SERVICE_LABEL)?.as_str(),
    ))
}

/// `<app>.<suffix>`, `<service>.<stack>.<suffix>` for a stack's app (its Compose name, which
/// the stack's containers search), and the app's service domain.
pub fn names_of(app: &AppSpec, suffix: &str) -> Vec<String> {
    let own = format!("{}.{suffix}", app.name);
    let mut names = vec![own.clone()];
    if let Some((stack, service)) = stack_of(app) {
        names.push(normalize(&format!("{service}.{stack}.{suffix}")));
    }
    if let Some(domain) = app.service.as_deref().map(normalize)
        && domain != own
    {
        names.push(domain);
    }
    names
}

/// Whether a replica gets traffic — from DNS, the router and the VIP alike: running with an
/// address and, when it has a health check (its own: during a rollout old and new replicas
/// may have different ones), passing it; a replica not checked yet does not serve.
pub fn serves(record: &ContainerRecord) -> bool {
    record.ip.is_some() && record.is_healthy()
}

/// The container port HTTP is routed to: the first published TCP container port, else the
/// port of an HTTP health check, else 80.
pub fn http_port(app: &AppSpec) -> u16 {
    if let Some(port) = app.ports.iter().find(|p| p.protocol == Protocol::Tcp) {
        return port.container;
    }
    match app.health.as_ref().map(|h| &h.probe) {
        Some(Probe::Http { port, .. }) => *port,
        _ => DEFAULT_HTTP_PORT,
    }
}

/// Why a deploy's names cannot be had: checked against the other apps before anything is
/// stored. `None` when they are free.
pub fn name_clash(spec: &AppSpec, others: &[AppSpec], suffix: &str) -> Option<String> {
    let own = format!("{}.{suffix}", spec.name);
    if let Some(domain) = spec.service.as_deref().map(normalize) {
        if domain == suffix {
            return Some(format!(
                "service domain {domain} is the DNS suffix of app names; pick a domain outside it"
            ));
        }
        if domain != own && domain.ends_with(&format!(".{suffix}")) {
            return Some(format!(
                "service domain {domain} is under the DNS suffix .{suffix}, which is reserved for app names ({own} already names this app)"
            ));
        }
    }
    let mine = names_of(spec, suffix);
    for other in others.iter().filter(|o| o.name != spec.name) {
        let theirs = names_of(other, suffix);
        if let Some(name) = mine.iter().find(|n| theirs.contains(n)) {
            return Some(format!(
                "service name {name} is already taken by app {}",
                other.name
            ));
        }
    }
    None
}

/// Counters for `/metrics`, shared by the DNS server and the router.
#[derive(Debug, Default)]
pub struct Counters {
    pub dns_answered: std::sync::atomic::AtomicU64,
    pub dns_nxdomain: std::sync::atomic::AtomicU64,
    pub dns_forwarded: std::sync::atomic::AtomicU64,
    pub dns_servfail: std::sync::atomic::AtomicU64,
    pub dns_refused: std::sync::atomic::AtomicU64,
    /// Router responses by status class (index: status / 100, 0..=5).
    pub http_responses: [std::sync::atomic::AtomicU64; 6],
    pub http_retries: std::sync::atomic::AtomicU64,
}

/// The current table, kept up to date by a watch on the store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Services {
    table: watch::Receiver<Arc<ServiceTable>>,
    counters: Arc<Counters>,
}

impl Services {
    /// Loads the table and keeps it current in a background task.
    pub async fn start(state: State, node: String, suffix: String) -> Result<Self, StoreError> {
        let first = load(&state, &node, &suffix).await?;
        let (tx, table) = watch::channel(Arc::new(first.0));
        tokio::spawn(follow(state, node, suffix, tx, first.1));
        Ok(Self {
            table,
            counters: Arc::new(Counters::default()),
        })
    }

    /// The table now.
    pub fn table(&self) -> Arc<ServiceTable> {
        self.table.borrow().clone()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Resolves once the table has changed since the last call on this clone.
    pub async fn changed(&mut self) {
        let _ = self.table.changed().await;
    }
}

/// The prefixes whose changes change the table.
const WATCHED: [&str; 4] = [keys::APPS, keys::CONTAINERS, keys::NODES, keys::LIVENESS];

/// Reads everything the table depends on; returns it with the revision to watch from.
async fn load(state: &State, node: &str, suffix: &str) -> Result<(ServiceTable, u64), StoreError> {
    // The revision first: a change after it is then seen by the watch, never lost.
    let (_, revision) = state.store().range(keys::APPS).await?;
    let apps = state.apps().await?;
    let containers = state.containers().await?;
    // A node whose liveness lease lapsed is gone for everyone else; this node still trusts
    // its own containers.
    let mut ready: BTreeSet<String> = state
        .cluster_nodes(node)
        .await?
        .into_iter()
        .filter_map(|(name, ready)| ready.then_some(name))
        .collect();
    ready.insert(node.to_owned());
    Ok((
        ServiceTable::build(suffix, &apps, &containers, Some(&ready)),
        revision,
    ))
}

/// Rebuilds the table after every batch of changes; re-establishes the watches after an error.
async fn follow(
    state: State,
    node: String,
    suffix: String,
    tx: watch::Sender<Arc<ServiceTable>>,
    mut revision: u64,
) {
    loop {
        let mut streams = Vec::new();
        for prefix in WATCHED {
            match state.store().watch(prefix, revision + 1).await {
                Ok(stream) => streams.push(stream),
                Err(err) => {
                    tracing::warn!("service records: watching {prefix}: {err}");
                    break;
                }
            }
        }
        if streams.len() == WATCHED.len() {
            let mut events = futures_util::stream::select_all(streams);
            // Every event batch: drain what is already there, then rebuild once.
            while let Some(event) = events.next().await {
                let mut failed = event.is_err();
                while let Some(Some(more)) = events.next().now_or_never() {
                    failed |= more.is_err();
                }
                if failed {
                    break;
                }
                if !rebuild(&state, &node, &suffix, &tx, &mut revision).await {
                    break;
                }
            }
            if tx.is_closed() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A resync: the history may be gone, so read everything again.
        rebuild(&state, &node, &suffix, &tx, &mut revision).await;
    }
}

async fn rebuild(
    state: &State,
    node: &str,
    suffix: &str,
    tx: &watch::Sender<Arc<ServiceTable>>,
    revision: &mut u64,
) -> bool {
    match load(state, node, suffix).await {
        Ok((table, at)) => {
            *revision = at;
            tx.send_replace(Arc::new(table));
            true
        }
        Err(err) => {
            tracing::warn!("service records: {}", crate::error_chain(&err));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerState, Health, HealthCheck, PortMapping};

    fn app(name: &str, service: Option<&str>) -> AppSpec {
        AppSpec {
            name: name.into(),
            image: "img".into(),
            service: service.map(Into::into),
            replicas: 2,
            env: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            labels: BTreeMap::new(),
            memory_bytes: None,
            cpu_millis: None,
            stop_timeout_secs: 1,
            health: None,
            generation: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            ..AppSpec::default()
        }
    }

    fn replica(app: &str, n: u8, state: ContainerState, health: Option<Health>) -> ContainerRecord {
        ContainerRecord {
            id: format!("{app}-{n}"),
            app: app.into(),
            slot: u32::from(n),
            node: "n1".into(),
            generation: 1,
            image: "img".into(),
            image_digest: "d".into(),
            state,
            exit_code: None,
            restart_count: 0,
            pid: 1,
            ip: Some(Ipv4Addr::new(10, 244, 0, n)),
            created_at_ms: 0,
            started_at_ms: Some(0),
            history: Vec::new(),
            health,
            health_detail: String::new(),
            ..ContainerRecord::default()
        }
    }

    fn checked(mut spec: AppSpec) -> AppSpec {
        spec.health = Some(HealthCheck {
            probe: Probe::Http {
                port: 8080,
                path: "/".into(),
            },
            interval_ms: 1000,
            timeout_ms: 500,
            retries: 1,
            start_period_ms: 0,
        });
        spec
    }

    #[test]
    fn healthy_replicas_only() {
        let apps = [
            app("web", Some("Web.Example.com.")),
            checked(app("api", None)),
        ];
        let containers = [
            replica("web", 2, ContainerState::Running, None),
            replica("web", 3, ContainerState::Exited, None),
            replica("web", 1, ContainerState::Running, None),
            replica("api", 4, ContainerState::Running, Some(Health::Healthy)),
            replica("api", 5, ContainerState::Running, Some(Health::Unhealthy)),
            replica("api", 6, ContainerState::Running, Some(Health::Starting)),
            replica("api", 7, ContainerState::Running, None),
        ];
        let table = ServiceTable::build("hivemind", &apps, &containers, None);
        let web = table.service("web").expect("web");
        assert_eq!(web.names, ["web.hivemind", "web.example.com"]);
        assert_eq!(
            web.endpoints,
            [Ipv4Addr::new(10, 244, 0, 1), Ipv4Addr::new(10, 244, 0, 2)]
        );
        assert_eq!(web.port, 80);
        let api = table.service("api").expect("api");
        // 7 has no verdict: it was started without a check (an old replica while a rollout
        // adds one), so it is judged as such and serves.
        assert_eq!(
            api.endpoints,
            [Ipv4Addr::new(10, 244, 0, 4), Ipv4Addr::new(10, 244, 0, 7)]
        );
        assert_eq!(api.port, 8080, "the HTTP check's port");

        // Containers of nodes that are not ready do not serve.
        let ready = BTreeSet::from(["n2".to_owned()]);
        let table = ServiceTable::build("hivemind", &apps, &containers, Some(&ready));
        assert_eq!(
            table.service("web").expect("web").endpoints,
            [] as [Ipv4Addr; 0]
        );
    }

    #[test]
    fn lookups() {
        let apps = [app("web", Some("web.example.com"))];
        let table = ServiceTable::build("hivemind", &apps, &[], None);
        for name in [
            "web.hivemind",
            "WEB.hivemind.",
            "web.example.com",
            "Web.Example.Com.",
        ] {
            assert!(
                matches!(table.lookup(name), Lookup::Service(s) if s.app == "web"),
                "{name}"
            );
        }
        for name in [
            "nope.hivemind",
            "hivemind",
            "a.web.hivemind",
            "x.web.example.com",
        ] {
            assert_eq!(table.lookup(name), Lookup::Unknown, "{name}");
        }
        for name in ["example.com", "registry.example.org", "hivemind.io"] {
            assert_eq!(table.lookup(name), Lookup::Outside, "{name}");
        }
    }

    #[test]
    fn published_port_wins() {
        let mut spec = checked(app("web", None));
        spec.ports = vec![
            PortMapping {
                host: 53,
                container: 5353,
                protocol: Protocol::Udp,
            },
            PortMapping {
                host: 8000,
                container: 3000,
                protocol: Protocol::Tcp,
            },
        ];
        assert_eq!(http_port(&spec), 3000);
    }

    #[test]
    fn clashes() {
        let others = [app("web", Some("shop.example.com")), app("api", None)];
        let ok = |spec: &AppSpec| name_clash(spec, &others, "hivemind");
        assert_eq!(ok(&app("new", Some("new.example.com"))), None);
        // Redeploying an app with its own names is fine.
        assert_eq!(ok(&app("web", Some("shop.example.com"))), None);
        assert_eq!(ok(&app("new", Some("new.hivemind"))), None);
        let taken = ok(&app("new", Some("Shop.Example.com"))).expect("taken");
        assert!(
            taken.contains("shop.example.com") && taken.contains("app web"),
            "{taken}"
        );
        let reserved = ok(&app("new", Some("api.hivemind"))).expect("reserved");
        assert!(reserved.contains("reserved"), "{reserved}");
        assert!(ok(&app("new", Some("hivemind"))).is_some());
        // A new app whose own name another app's domain already holds.
        let others = [app("web", Some("api.corp"))];
        let clash = name_clash(&app("api", None), &others, "corp").expect("clash");
        assert!(clash.contains("api.corp"), "{clash}");
    }
}
