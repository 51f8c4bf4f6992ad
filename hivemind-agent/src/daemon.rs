//! `hivemind agent`: wires the subsystems together and runs until SIGTERM or SIGINT.

use anyhow::Context as _;
use tokio::{signal::unix::SignalKind, sync::watch};

use crate::{
    api::{
        grpc, rest,
        service::{AgentService, Parts},
    },
    config::AgentConfig,
    healthcheck::HealthMonitor,
    lb,
    net::{dataplane, network::NodeNetwork},
    paths,
    reconcile::{Lifecycle, Reconciler},
    runtime::{Runtime, netns::NetnsDir},
    state::State,
    store::Store,
    volumes::VolumeDirs,
};

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    tracing::info!(version = crate::VERSION, node = %config.node_name, data_dir = %config.data_dir.root().display(), "starting");
    let service = start_subsystems(&config).await?;
    serve(&config, service).await
}

/// Store, dataplane, runtime, node network, reconciler and health monitor, wired into the
/// service the APIs serve.
async fn start_subsystems(config: &AgentConfig) -> anyhow::Result<AgentService> {
    let store = if config.etcd_endpoints.is_empty() {
        Store::open_redb(&config.data_dir.store_db())?
    } else {
        Store::connect_etcd(&config.etcd_endpoints).await?
    };
    let state = State::new(store);
    let dataplane = dataplane::start(&paths::pin_dir(&config.node_name))?;
    let runtime = Runtime::new(
        config.containerd_socket.clone(),
        config.containerd_namespace.clone(),
        config.insecure_registries.clone(),
    );
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

    let vip_cgroup = match &config.vip_cgroup {
        Some(dir) => dir.clone(),
        None => lb::default_cgroup(&config.node_name)?,
    };
    let vips = lb::start(
        state.clone(),
        config.service_cidr,
        &config.node_name,
        &paths::pin_dir(&config.node_name),
        &vip_cgroup,
    )
    .context("starting the VIP load balancer")?;

    let volumes = VolumeDirs::new(config.data_dir.volumes());
    let lifecycle = Lifecycle::new(
        runtime.clone(),
        state.clone(),
        config.node_name.clone(),
        config.data_dir.containers(),
        volumes.clone(),
        NetnsDir::new(paths::netns_dir(&config.node_name)),
        network.clone(),
    );
    let reconciler = Reconciler::new(lifecycle, state.clone(), config.node_name.clone()).spawn();
    HealthMonitor::new(
        state.clone(),
        runtime.clone(),
        config.node_name.clone(),
        config.data_dir.containers(),
    )
    .spawn();

    Ok(AgentService::new(Parts {
        node_name: config.node_name.clone(),
        state,
        runtime,
        dataplane,
        network,
        reconciler,
        volumes,
        containers_dir: config.data_dir.containers(),
        vips,
    }))
}

/// gRPC on the socket, REST and the UI on the API address, until SIGTERM or SIGINT.
async fn serve(config: &AgentConfig, service: AgentService) -> anyhow::Result<()> {
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
    tracing::info!(socket = %config.socket.display(), api = %config.api_addr, "serving");

    let grpc_task = tokio::spawn(grpc::serve(grpc_listener, service.clone(), stopped()));
    let rest_task = tokio::spawn({
        let shutdown = stopped();
        let api_addr = config.api_addr;
        async move {
            axum::serve(rest_listener, rest::router(service, api_addr, token))
                .with_graceful_shutdown(shutdown)
                .await
        }
    });

    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    grpc_task
        .await
        .context("gRPC server task")?
        .context("gRPC server")?;
    rest_task
        .await
        .context("REST server task")?
        .context("REST server")?;
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("stopped");
    Ok(())
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
