//! gRPC for the CLI, on a Unix socket, and for the other nodes of a cluster, on the cluster
//! port with mutual TLS. Thin: each method calls the service and maps errors through
//! `From<ApiError> for Status`.

use std::{io, path::Path, pin::Pin};

use tokio::{
    net::{TcpListener, UnixListener},
    sync::mpsc,
};
use tokio_stream::{
    Stream, StreamExt as _,
    wrappers::{ReceiverStream, UnixListenerStream},
};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

use super::service::{AgentService, LogQuery};
use crate::{
    cluster::{self, Cluster},
    proto::{
        self, agent_server::AgentServer, apps_server::AppsServer,
        cluster_peer_server::ClusterPeerServer, cluster_server::ClusterServer,
        containers_server::ContainersServer, events_server::EventsServer,
        manifests_server::ManifestsServer, monitor_server::MonitorServer,
        policies_server::PoliciesServer, registries_server::RegistriesServer,
        secrets_server::SecretsServer, volumes_server::VolumesServer,
    },
};

type Streaming<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl proto::agent_server::Agent for AgentService {
    async fn health(
        &self,
        _request: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthReply>, Status> {
        Ok(Response::new(AgentService::health(self).await))
    }
}

#[tonic::async_trait]
impl proto::apps_server::Apps for AgentService {
    type DeployStream = Streaming<proto::DeployEvent>;
    type RestartStream = Streaming<proto::DeployEvent>;
    type UpdateStream = Streaming<proto::DeployEvent>;

    async fn deploy(
        &self,
        request: Request<proto::DeployRequest>,
    ) -> Result<Response<Self::DeployStream>, Status> {
        let request = request.into_inner();
        let service = self.clone();
        Ok(Response::new(with_progress(move |progress| async move {
            Box::pin(service.deploy(request, Some(progress))).await
        })))
    }

    async fn list(
        &self,
        _request: Request<proto::ListAppsRequest>,
    ) -> Result<Response<proto::ListAppsReply>, Status> {
        Ok(Response::new(self.apps().await?))
    }

    async fn get(
        &self,
        request: Request<proto::AppRequest>,
    ) -> Result<Response<proto::AppInfo>, Status> {
        Ok(Response::new(self.app(&request.into_inner().name).await?))
    }

    async fn scale(
        &self,
        request: Request<proto::ScaleRequest>,
    ) -> Result<Response<proto::ActionReply>, Status> {
        let request = request.into_inner();
        Ok(Response::new(
            AgentService::scale(self, &request.name, request.replicas).await?,
        ))
    }

    async fn restart(
        &self,
        request: Request<proto::RestartRequest>,
    ) -> Result<Response<Self::RestartStream>, Status> {
        let request = request.into_inner();
        let service = self.clone();
        Ok(Response::new(with_progress(move |progress| async move {
            AgentService::restart(&service, &request, Some(progress)).await
        })))
    }

    async fn remove(
        &self,
        request: Request<proto::AppRequest>,
    ) -> Result<Response<proto::ActionReply>, Status> {
        Ok(Response::new(
            self.remove_app(&request.into_inner().name).await?,
        ))
    }

    async fn update(
        &self,
        request: Request<proto::UpdateRequest>,
    ) -> Result<Response<Self::UpdateStream>, Status> {
        let request = request.into_inner();
        let service = self.clone();
        Ok(Response::new(with_progress(move |progress| async move {
            AgentService::update(&service, request, Some(progress)).await
        })))
    }

    async fn inspect(
        &self,
        request: Request<proto::AppRequest>,
    ) -> Result<Response<proto::AppSpecInfo>, Status> {
        Ok(Response::new(
            AgentService::inspect(self, &request.into_inner().name).await?,
        ))
    }
}

/// Runs `operation` in its own task (it finishes even if the client goes away) and streams
/// its progress, then its result, as deploy events.
fn with_progress<F, Fut>(operation: F) -> Streaming<proto::DeployEvent>
where
    F: FnOnce(mpsc::Sender<super::progress::Progress>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<proto::DeployResult, super::error::ApiError>> + Send,
{
    let (events, rx) = mpsc::channel::<Result<proto::DeployEvent, Status>>(64);
    let (progress, mut progress_rx) = mpsc::channel(64);
    let forward = events.clone();
    let forwarder = tokio::spawn(async move {
        while let Some(update) = progress_rx.recv().await {
            let event = proto::DeployEvent {
                progress: Some(super::progress::to_proto(&update)),
                result: None,
            };
            if forward.send(Ok(event)).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let outcome = operation(progress).await;
        let _ = forwarder.await; // every progress message before the result
        let message = outcome
            .map(|result| proto::DeployEvent {
                progress: None,
                result: Some(result),
            })
            .map_err(Status::from);
        let _ = events.send(message).await;
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl proto::containers_server::Containers for AgentService {
    type LogsStream = Streaming<proto::LogChunk>;
    type ExecStream = Streaming<proto::ExecOutput>;

    async fn list(
        &self,
        request: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersReply>, Status> {
        Ok(Response::new(
            self.containers(&request.into_inner().app).await?,
        ))
    }

    async fn info(
        &self,
        request: Request<proto::ContainerRequest>,
    ) -> Result<Response<proto::ContainerInfo>, Status> {
        Ok(Response::new(
            self.container(&request.into_inner().container_id).await?,
        ))
    }

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let request = request.into_inner();
        let query = LogQuery::from(&request);
        let stream = AgentService::logs(self, &request.container_id, query).await?;
        Ok(Response::new(Box::pin(stream.map(|chunk| {
            chunk
                .map(|data| proto::LogChunk { data })
                .map_err(Status::from)
        }))))
    }

    async fn exec(
        &self,
        request: Request<tonic::Streaming<proto::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = request.into_inner();
        let Some(start) = input.message().await?.and_then(|first| first.start) else {
            return Err(Status::invalid_argument(
                "an exec's first message must say what to run (start)",
            ));
        };
        // A broken caller stream is the end of its input.
        let input = input.map_while(Result::ok);
        let stream = AgentService::exec(self, start, input).await?;
        Ok(Response::new(Box::pin(
            stream.map(|message| message.map_err(Status::from)),
        )))
    }
}

#[tonic::async_trait]
impl proto::volumes_server::Volumes for AgentService {
    async fn create(
        &self,
        request: Request<proto::VolumeRequest>,
    ) -> Result<Response<proto::VolumeInfo>, Status> {
        Ok(Response::new(
            self.create_volume(&request.into_inner().name).await?,
        ))
    }

    async fn list(
        &self,
        _request: Request<proto::ListVolumesRequest>,
    ) -> Result<Response<proto::ListVolumesReply>, Status> {
        Ok(Response::new(self.volumes().await?))
    }

    async fn remove(
        &self,
        request: Request<proto::VolumeRequest>,
    ) -> Result<Response<proto::ActionReply>, Status> {
        Ok(Response::new(
            self.remove_volume(&request.into_inner().name).await?,
        ))
    }
}

#[tonic::async_trait]
impl proto::policies_server::Policies for AgentService {
    async fn apply(
        &self,
        request: Request<proto::ApplyPoliciesRequest>,
    ) -> Result<Response<proto::ApplyPoliciesReply>, Status> {
        Ok(Response::new(
            self.apply_policies(&request.into_inner().sources).await?,
        ))
    }

    async fn list(
        &self,
        _request: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesReply>, Status> {
        Ok(Response::new(self.policies().await?))
    }

    async fn get(
        &self,
        request: Request<proto::PolicyRequest>,
    ) -> Result<Response<proto::PolicyInfo>, Status> {
        Ok(Response::new(
            self.policy(&request.into_inner().name).await?,
        ))
    }

    async fn remove(
        &self,
        request: Request<proto::PolicyRequest>,
    ) -> Result<Response<proto::ActionReply>, Status> {
        Ok(Response::new(
            self.remove_policy(&request.into_inner().name).await?,
        ))
    }
}

#[tonic::async_trait]
impl proto::monitor_server::Monitor for AgentService {
    type WatchStream = Streaming<proto::FlowEvent>;

    async fn watch(
        &self,
        request: Request<proto::MonitorRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.monitor(request.into_inner()).await?;
        Ok(Response::new(Box::pin(stream.map(Ok))))
    }
}

#[tonic::async_trait]
impl proto::events_server::Events for AgentService {
    type WatchStream = Streaming<proto::EventInfo>;

    async fn watch(
        &self,
        request: Request<proto::EventsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.events(request.into_inner()).await?;
        Ok(Response::new(Box::pin(stream.map(Ok))))
    }
}

#[tonic::async_trait]
impl proto::cluster_server::Cluster for AgentService {
    async fn list_nodes(
        &self,
        _request: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesReply>, Status> {
        Ok(Response::new(AgentService::list_nodes(self).await?))
    }

    async fn join(
        &self,
        request: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinReply>, Status> {
        Ok(Response::new(
            AgentService::join(self, &request.into_inner()).await?,
        ))
    }

    async fn token(
        &self,
        _request: Request<proto::TokenRequest>,
    ) -> Result<Response<proto::TokenReply>, Status> {
        Ok(Response::new(self.join_token().await?))
    }
}

/// The node-to-node side of joining, served on the cluster port only.
#[derive(Clone, Debug)]
pub struct PeerService(pub Cluster);

#[tonic::async_trait]
impl proto::cluster_peer_server::ClusterPeer for PeerService {
    async fn admit(
        &self,
        request: Request<proto::AdmitRequest>,
    ) -> Result<Response<proto::AdmitReply>, Status> {
        Ok(Response::new(self.0.admit(request.into_inner()).await?))
    }

    async fn abort(
        &self,
        request: Request<proto::AbortRequest>,
    ) -> Result<Response<proto::ActionReply>, Status> {
        let name = request.get_ref().node_name.clone();
        self.0.abort(request.into_inner()).await?;
        Ok(Response::new(proto::ActionReply {
            message: format!("the admission of {name} was undone"),
        }))
    }
}

/// Binds the socket (replacing a stale one left by a killed agent) with mode 0660: root and
/// the socket's group may drive the agent.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

#[tonic::async_trait]
impl proto::secrets_server::Secrets for AgentService {
    async fn create(
        &self,
        request: Request<proto::CreateSecretRequest>,
    ) -> Result<Response<proto::SecretInfo>, Status> {
        let request = request.into_inner();
        Ok(Response::new(
            self.create_secret(&request.name, &request.value).await?,
        ))
    }

    async fn list(
        &self,
        _request: Request<proto::ListSecretsRequest>,
    ) -> Result<Response<proto::ListSecretsReply>, Status> {
        Ok(Response::new(self.secrets().await?))
    }

    async fn remove(
        &self,
        request: Request<proto::SecretRequest>,
    ) -> Result<Response<proto::ActionReply>, Status> {
        Ok(Response::new(
            self.remove_secret(&request.into_inner().name).await?,
        ))
    }
}

#[tonic::async_trait]
impl proto::registries_server::Registries for AgentService {
    async fn login(
        &self,
        request: Request<proto::RegistryLoginRequest>,
    ) -> Result<Response<proto::ActionReply>, Status> {
        Ok(Response::new(
            self.registry_login(request.into_inner()).await?,
        ))
    }

    async fn logout(
        &self,
        request: Request<proto::RegistryRequest>,
    ) -> Result<Response<proto::ActionReply>, Status> {
        Ok(Response::new(
            self.registry_logout(&request.into_inner().host).await?,
        ))
    }

    async fn list(
        &self,
        _request: Request<proto::ListRegistriesRequest>,
    ) -> Result<Response<proto::ListRegistriesReply>, Status> {
        Ok(Response::new(self.registries().await?))
    }
}

#[tonic::async_trait]
impl proto::manifests_server::Manifests for AgentService {
    type ApplyStream = Streaming<proto::DeployEvent>;

    async fn apply(
        &self,
        request: Request<proto::ApplyRequest>,
    ) -> Result<Response<Self::ApplyStream>, Status> {
        let request = request.into_inner();
        let service = self.clone();
        Ok(Response::new(with_progress(move |progress| async move {
            Box::pin(service.apply_manifest(request, Some(progress))).await
        })))
    }

    async fn get(
        &self,
        request: Request<proto::GetManifestRequest>,
    ) -> Result<Response<proto::GetManifestReply>, Status> {
        Ok(Response::new(
            self.get_manifest(&request.into_inner()).await?,
        ))
    }

    async fn list_sets(
        &self,
        _request: Request<proto::ListSetsRequest>,
    ) -> Result<Response<proto::ListSetsReply>, Status> {
        Ok(Response::new(self.applied_sets().await?))
    }
}

/// A policy apply carries up to [`crate::policy::MAX_YAML_BYTES`] of YAML, plus file names and framing.
const POLICY_MESSAGE_LIMIT: usize = crate::policy::MAX_YAML_BYTES + (64 << 10);

pub async fn serve(
    listener: UnixListener,
    service: AgentService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(AgentServer::new(service.clone()))
        .add_service(AppsServer::new(service.clone()))
        .add_service(ContainersServer::new(service.clone()))
        .add_service(VolumesServer::new(service.clone()))
        .add_service(SecretsServer::new(service.clone()))
        .add_service(RegistriesServer::new(service.clone()))
        .add_service(
            PoliciesServer::new(service.clone()).max_decoding_message_size(POLICY_MESSAGE_LIMIT),
        )
        .add_service(
            ManifestsServer::new(service.clone()).max_decoding_message_size(POLICY_MESSAGE_LIMIT),
        )
        .add_service(MonitorServer::new(service.clone()))
        .add_service(EventsServer::new(service.clone()))
        .add_service(ClusterServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}

/// The cluster endpoint: TLS with this node's certificate. `ClusterPeer` (joining) takes any
/// caller; every other service requires a client certificate of the cluster CA — so another
/// node can call this node's services, e.g. `Containers.Info` and `Logs` for the containers
/// running here, through [`cluster::ClusterClient`] — or this agent's API token, which is how
/// a remote `hivemind --addr https://...` drives it.
pub async fn serve_cluster(
    listener: TcpListener,
    tls: &cluster::NodeTls,
    api_token: &str,
    service: AgentService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let gate = cluster::NodeOrToken::new(api_token);
    let limit = POLICY_MESSAGE_LIMIT;
    tonic::transport::Server::builder()
        .tls_config(cluster::server_tls(tls))?
        .add_service(ClusterPeerServer::new(PeerService(
            service.cluster().clone(),
        )))
        .add_service(InterceptedService::new(
            AgentServer::new(service.clone()),
            gate.clone(),
        ))
        .add_service(InterceptedService::new(
            AppsServer::new(service.clone()),
            gate.clone(),
        ))
        .add_service(InterceptedService::new(
            ContainersServer::new(service.clone()),
            gate.clone(),
        ))
        .add_service(InterceptedService::new(
            VolumesServer::new(service.clone()),
            gate.clone(),
        ))
        .add_service(InterceptedService::new(
            SecretsServer::new(service.clone()),
            gate.clone(),
        ))
        .add_service(InterceptedService::new(
            RegistriesServer::new(service.clone()),
            gate.clone(),
        ))
        .add_service(InterceptedService::new(
            PoliciesServer::new(service.clone()).max_decoding_message_size(limit),
            gate.clone(),
        ))
        .add_service(InterceptedService::new(
            ManifestsServer::new(service.clone()).max_decoding_message_size(limit),
            gate.clone(),
        ))
        .add_service(InterceptedService::new(
            MonitorServer::new(service.clone()),
            gate.clone(),
        ))
        .add_service(InterceptedService::new(
            EventsServer::new(service.clone()),
            gate.clone(),
        ))
        .add_service(InterceptedService::new(ClusterServer::new(service), gate))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
