//! gRPC channels over Unix sockets: to containerd, and from the CLI to the agent.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// A channel that connects on first use and reconnects after the peer restarts, so a daemon
/// that is down at start (containerd) is picked up when it comes back.
pub fn lazy(path: impl Into<PathBuf>) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path.into()))
}

/// A channel that fails now if nothing listens at `path`.
pub async fn connect(path: impl Into<PathBuf>) -> Result<Channel, tonic::transport::Error> {
    endpoint()
        .connect_with_connector(connector(path.into()))
        .await
}

fn endpoint() -> Endpoint {
    // The URI is required by the HTTP/2 layer but never resolved: the connector ignores it.
    Endpoint::from_static("http://localhost")
}

fn connector(
    path: PathBuf,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_| {
        let path = path.clone();
        async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(TokioIo::new)
        }
    })
}
