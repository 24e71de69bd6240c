//! The client port's server stack, for nodes and frontends alike: the client API
//! (`service`), gRPC health and server reflection (v1 and v1alpha), on accepted
//! connections with Nagle's algorithm off; and how it stops (NOT_SERVING first, then
//! the calls in flight drain, bounded).

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::api::SeatsApi;
use crate::error::StartError;
use crate::lifecycle::CancellationToken;
use crate::service::SeatsService;

pub(crate) type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// Serves the client API, gRPC health and server reflection on `listener` until
/// `stopped` is cancelled; nodes and frontends alike. With `tls`, only over TLS.
pub(crate) async fn serve<A: SeatsApi>(
    seats: SeatsService<A>,
    listener: TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    stopped: CancellationToken,
) -> Result<(tonic_health::server::HealthReporter, ServerTask), StartError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SeatsService>().await;
    // Both reflection versions: grpcurl speaks v1, while older grpcurl, Python's
    // reflection client and Evans speak only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(seatd_proto::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| StartError::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| StartError::Config(format!("reflection (v1alpha): {e}")))?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| StartError::Config(format!("TLS on the client port: {e}")))?;
    }
    let server = tokio::spawn(
        builder
            .add_service(seats)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                incoming(listener),
                async move { stopped.cancelled().await },
            ),
    );
    Ok((health, server))
}

/// Accepted connections with Nagle's algorithm off. The server's own `tcp_nodelay`
/// only applies to listeners it binds itself; without this, small replies waited
/// for the peer's delayed ACK (about 40 ms) whenever a connection was not busy.
pub(crate) fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Reports NOT_SERVING, stops accepting calls and waits (at most `drain_timeout`)
/// for the calls in flight to finish.
pub(crate) async fn stop_serving(
    health: &tonic_health::server::HealthReporter,
    stop: &CancellationToken,
    server: ServerTask,
    drain_timeout: Duration,
) {
    health.set_not_serving::<SeatsService>().await;
    stop.cancel();
    drain(server, drain_timeout).await;
}

/// Waits (at most `drain_timeout`) for a stopping server's calls in flight.
pub(crate) async fn drain(mut server: ServerTask, drain_timeout: Duration) {
    match tokio::time::timeout(drain_timeout, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "server task failed"),
        Err(_) => {
            warn!("calls still in flight after the drain timeout; cutting them off");
            server.abort();
        }
    }
}
