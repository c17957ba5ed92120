//! Listeners and the accept loop (Pingora's L4 service shape: each accepted stream is handed to
//! `session::serve` with a shutdown signal, on one of the connection threads).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::session::{ConnectionResult, Gateway};
use crate::workers::{Accepted, ConnectionThreads};

pub(crate) async fn accept_loop(
    listener: TcpListener,
    bound_host: Option<String>,
    gateway: Arc<Gateway>,
    threads: Arc<ConnectionThreads>,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    info!(listen = %local, host = bound_host.as_deref().unwrap_or("(from URI)"), "proxy listening");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let Some(handshake) = gateway.handshakes.try_acquire(peer.ip()) else {
            gateway
                .metrics
                .connections_total
                .with_label_values(&[ConnectionResult::RefusedSource.as_str()])
                .inc();
            tracing::debug!(%peer, "refused: proxy.max_handshakes_per_source reached for this address");
            drop(stream);
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            gateway
                .metrics
                .connections_total
                .with_label_values(&[ConnectionResult::RefusedCapacity.as_str()])
                .inc();
            warn!(%peer, "refused: proxy.max_connections reached");
            drop(stream);
            continue;
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                warn!(%peer, error = %e, "cannot hand accepted connection to a connection thread");
                continue;
            }
        };
        threads.dispatch(Accepted {
            stream,
            peer,
            bound_host: bound_host.clone(),
            permit,
            handshake,
        });
    }
}
