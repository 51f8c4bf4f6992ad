//! `hivemind agent`: wires the subsystems together and runs until SIGTERM or SIGINT, or until
//! a join asks it to restart into the cluster.

use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use tokio::{signal::unix::SignalKind, sync::watch};

use crate::{
    api::{
        grpc, rest,
        service::{AgentService, Parts},
    },
    cluster::{self, Cluster},
    config::AgentConfig,
    healthcheck::HealthMonitor,
    lb,
    net::{dataplane, network::NodeNetwork, overlay_sync},
    paths,
    reconcile::{Lifecycle, Reconciler},
    runtime::{
        Runtime,
        image::{RegistryOptions, credentials::Credentials},
        netns::NetnsDir,
    },
    sealed::SealKey,
    service::{Services, dns, router},
    state::State,
    vault::Vault,
    volumes::VolumeDirs,
};

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// SIGTERM or SIGINT.
    Stopped,
    /// A join completed: the process should re-execute itself (the new agent adopts the
    /// running etcd member and keeps its state in the cluster).
    Restart,
}

pub async fn run(mut config: AgentConfig) -> anyhow::Result<Outcome> {
    tracing::info!(version = crate::VERSION, node = %config.node_name, data_dir = %config.data_dir.root().display(), "starting");
    let (store, cluster) = cluster::bootstrap::boot(&config)
        .await
        .context("setting up the store")?;
    if let Some(settings) = cluster.config() {
        config.cluster_cidr = settings.cluster_cidr;
        config.vxlan_port = settings.vxlan_port;
        config.cluster_port = settings.cluster_port;
        config.node_ip = Some(settings.node_ip.into());
    }
    let outcome = match start_subsystems(&config, &cluster, store).await {
        Ok((service, liveness)) => serve(&config, &cluster, service, liveness).await,
        Err(err) => Err(err),
    };
    // The local etcd member stops with the agent, except across a restart into the cluster.
    cluster.shutdown(matches!(outcome, Ok(Outcome::Restart)));
    outcome
}

/// Dataplane, runtime, node network, node registration, reconciler and health monitor, wired
/// into the service the APIs serve.
async fn start_subsystems(
    config: &AgentConfig,
    cluster: &Cluster,
    store: crate::store::Store,
) -> anyhow::Result<(AgentService, cluster::nodes::LivenessHandle)> {
    let state = State::new(store);
    let seal_key = SealKey::load_or_create(&config.data_dir.seal_key())?;
    let vault = Vault::new(state.clone(), seal_key);
    let dataplane = dataplane::start(&paths::pin_dir(&config.node_name))?;
    let runtime = Runtime::with_registries(
        config.containerd_socket.clone(),
        config.containerd_namespace.clone(),
        RegistryOptions {
            insecure: config.insecure_registries.clone(),
            ca: config.registry_ca.clone(),
            credentials: Credentials {
                stored: Some(Arc::new(vault.clone())),
                docker_config: config.registry_config.clone(),
            },
            ..RegistryOptions::default()
        },
    );
    // The shim runs this same binary to stamp containers' output; without it (no path to
    // ourselves) output is still kept, only without times.
    let runtime = match std::env::current_exe() {
        Ok(exe) => runtime.with_log_writer(exe),
        Err(err) => {
            tracing::warn!("container logs without timestamps: cannot find this binary: {err}");
            runtime
        }
    };
    match runtime.version().await {
        Ok(version) => tracing::info!(version = %version.version, "containerd reachable"),
        // Not fatal: the runtime reconnects by itself and health reports it down meanwhile.
        Err(err) => tracing::warn!("{err}"),
    }

    let node_ip = match config.node_ip {
        Some(std::net::IpAddr::V4(ip)) => Some(ip),
        Some(std::net::IpAddr::V6(ip)) => anyhow::bail!("--node-ip {ip}: the overlay is IPv4 only"),
        None => None,
    };
    let network = NodeNetwork::start(
        state.clone(),
        dataplane.clone(),
        &config.node_name,
        config.cluster_cidr,
        config.underlay_iface.as_deref(),
        node_ip,
    )
    .await
    .context("setting up the node's container network")?;

    let vips = start_vips(config, &state)?;

    let volumes = VolumeDirs::new(config.data_dir.volumes());
    let lifecycle = Lifecycle::new(
        runtime.clone(),
        state.clone(),
        config.node_name.clone(),
        config.data_dir.containers(),
        volumes.clone(),
        NetnsDir::new(paths::netns_dir(&config.node_name)),
        network.clone(),
        vault.clone(),
    )
    .with_dns_suffix(&config.dns_suffix);
    let liveness = cluster
        .register(network.subnet(), network.node_ip())
        .await
        .context("registering the node")?;
    // In a cluster the overlay follows the store for as long as the agent runs (the task
    // ends with the runtime).
    if cluster.config().is_some() {
        overlay_sync::spawn(
            state.clone(),
            network.clone(),
            config.node_name.clone(),
            config.vxlan_port,
        );
    }
    let reconciler = Reconciler::new(lifecycle, state.clone(), config.node_name.clone()).spawn();
    HealthMonitor::new(
        state.clone(),
        runtime.clone(),
        config.node_name.clone(),
        config.data_dir.containers(),
    )
    .spawn();

    let services = start_service_discovery(config, &state, &network).await?;

    let service = AgentService::new(Parts {
        node_name: config.node_name.clone(),
        state,
        runtime,
        dataplane,
        network,
        reconciler,
        volumes,
        vault,
        containers_dir: config.data_dir.containers(),
        cluster: cluster.clone(),
        services,
        vips,
    });
    Ok((service, liveness))
}

/// The VIP load balancer: its programs on the containers' cgroup, its maps kept current.
fn start_vips(config: &AgentConfig, state: &State) -> anyhow::Result<lb::Vips> {
    let vip_cgroup = match &config.vip_cgroup {
        Some(dir) => dir.clone(),
        None => lb::default_cgroup(&config.node_name)?,
    };
    lb::start(
        state.clone(),
        config.service_cidr,
        &config.node_name,
        &paths::pin_dir(&config.node_name),
        &vip_cgroup,
    )
    .context("starting the VIP load balancer")
}

/// Service records, DNS on the node's gateway and the HTTP router.
async fn start_service_discovery(
    config: &AgentConfig,
    state: &State,
    network: &NodeNetwork,
) -> anyhow::Result<Services> {
    let services = Services::start(
        state.clone(),
        config.node_name.clone(),
        config.dns_suffix.clone(),
    )
    .await
    .context("loading the service records")?;
    dns::start(
        std::net::SocketAddr::new(network.gateway().into(), 53),
        services.clone(),
        config.dns_upstreams.clone(),
    )
    .await?;
    if let Some(addr) = config.http_addr {
        router::start(addr, services.clone()).await?;
    } else {
        tracing::info!("HTTP router off (--http-addr off)");
    }
    Ok(services)
}

/// gRPC on the socket, REST and the UI on the API address, the cluster endpoint in a cluster,
/// until SIGTERM or SIGINT or a join's restart.
async fn serve(
    config: &AgentConfig,
    cluster: &Cluster,
    service: AgentService,
    liveness: cluster::nodes::LivenessHandle,
) -> anyhow::Result<Outcome> {
    let token = rest::security::load_or_create_token(&config.data_dir.api_token())?;
    if !config.api_addr.ip().is_loopback() {
        tracing::info!(api = %config.api_addr, token_file = %config.data_dir.api_token().display(), "the REST API is not on loopback: requests need the bearer token");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let grpc_listener = grpc::bind(&config.socket)
        .with_context(|| format!("cannot listen on {}", config.socket.display()))?;
    let rest_listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.api_addr))?;
    let cluster_listener = match (cluster.cluster_address(), cluster.tls()) {
        (Some(address), Some(tls)) => Some((
            tokio::net::TcpListener::bind(&address)
                .await
                .with_context(|| format!("cannot listen on {address} (--cluster-port)"))?,
            tls.clone(),
            address,
        )),
        _ => None,
    };
    tracing::info!(socket = %config.socket.display(), api = %config.api_addr, cluster = ?cluster.cluster_address(), "serving");

    let cluster_task = cluster_listener.map(|(listener, tls, address)| {
        let service = service.clone();
        let shutdown = stopped();
        let token = token.clone();
        tokio::spawn(async move {
            let served = grpc::serve_cluster(listener, &tls, &token, service, shutdown).await;
            if let Err(err) = &served {
                tracing::error!(%address, "cluster endpoint: {err}");
            }
            served
        })
    });
    let grpc_task = tokio::spawn(grpc::serve(grpc_listener, service.clone(), stopped()));
    let rest_task = tokio::spawn({
        let shutdown = stopped();
        let api_addr = config.api_addr;
        async move {
            // TCP_NODELAY: answers written in more than one piece must not wait for the
            // client's delayed ACK.
            let listener = rest_listener.tap_io(|stream| {
                let _ = stream.set_nodelay(true);
            });
            axum::serve(listener, rest::router(service, api_addr, token))
                .with_graceful_shutdown(shutdown)
                .await
        }
    });

    let mut restart = cluster.restart_requested();
    let outcome = tokio::select! {
        signal = wait_for_signal() => {
            signal?;
            tracing::info!("shutting down");
            Outcome::Stopped
        }
        _ = restart.wait_for(|restart| *restart) => {
            tracing::info!("joined a cluster; restarting into it");
            Outcome::Restart
        }
    };
    let _ = stop_tx.send(true);
    grpc_task
        .await
        .context("gRPC server task")?
        .context("gRPC server")?;
    rest_task
        .await
        .context("REST server task")?
        .context("REST server")?;
    if let Some(task) = cluster_task {
        task.await
            .context("cluster endpoint task")?
            .context("cluster endpoint")?;
    }
    liveness.stop().await;
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("stopped");
    Ok(outcome)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term =
        tokio::signal::unix::signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
