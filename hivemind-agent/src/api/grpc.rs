//! gRPC for the CLI, on a Unix socket. Thin: each method calls the service and maps errors
//! through `From<ApiError> for Status`.

use std::{io, path::Path, pin::Pin};

use tokio::{net::UnixListener, sync::mpsc};
use tokio_stream::{
    Stream, StreamExt as _,
    wrappers::{ReceiverStream, UnixListenerStream},
};
use tonic::{Request, Response, Status};

use super::service::AgentService;
use crate::proto::{
    self, agent_server::AgentServer, apps_server::AppsServer, containers_server::ContainersServer,
    monitor_server::MonitorServer, policies_server::PoliciesServer, volumes_server::VolumesServer,
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

    async fn deploy(
        &self,
        request: Request<proto::DeployRequest>,
    ) -> Result<Response<Self::DeployStream>, Status> {
        let request = request.into_inner();
        let (events, rx) = mpsc::channel::<Result<proto::DeployEvent, Status>>(64);
        let (progress, mut progress_rx) = mpsc::channel(64);
        let service = self.clone();
        let forward = events.clone();
        tokio::spawn(async move {
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
            let outcome = service.deploy(request, Some(progress)).await;
            let message = outcome
                .map(|result| proto::DeployEvent {
                    progress: None,
                    result: Some(result),
                })
                .map_err(Status::from);
            let _ = events.send(message).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
        request: Request<proto::AppRequest>,
    ) -> Result<Response<proto::ActionReply>, Status> {
        Ok(Response::new(
            AgentService::restart(self, &request.into_inner().name).await?,
        ))
    }

    async fn remove(
        &self,
        request: Request<proto::AppRequest>,
    ) -> Result<Response<proto::ActionReply>, Status> {
        Ok(Response::new(
            self.remove_app(&request.into_inner().name).await?,
        ))
    }
}

#[tonic::async_trait]
impl proto::containers_server::Containers for AgentService {
    type LogsStream = Streaming<proto::LogChunk>;

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
        let stream =
            AgentService::logs(self, &request.container_id, request.follow, request.tail).await?;
        Ok(Response::new(Box::pin(stream.map(|chunk| {
            chunk
                .map(|data| proto::LogChunk { data })
                .map_err(Status::from)
        }))))
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
        .add_service(PoliciesServer::new(service.clone()))
        .add_service(MonitorServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}
