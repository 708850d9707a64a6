//! The gateway's listener: what `axum::serve` does (TCP_NODELAY on every
//! accepted connection, the peer's address as `ConnectInfo`, a graceful shutdown
//! that waits for open connections), in HTTP/1.1 only. The gateway is built with
//! hyper's HTTP/2 to call providers over h2c (`crate::proxy::upstream`); axum's
//! server would then take h2c from clients too, a protocol its public listener
//! never offered.

use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Serves `app` on `listener` until `shutdown` fires, then lets every open
/// connection finish its requests (streams included) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // hyper's HTTP/1 server itself: hyper-util's auto builder, even `http1_only`,
    // answers h2c's preface when serving with upgrades.
    let mut builder = Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new());
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let app = app
            .clone()
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let (builder, shutdown) = (builder.clone(), shutdown.clone());
        connections.spawn(async move {
            let conn = builder
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app))
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::trace!(error = %e, %peer, "connection ended");
                    }
                    return;
                }
                _ = shutdown.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// As `axum::serve`: a connection reset before it was accepted is nothing; any
/// other failure (out of file descriptors) is logged and waited out.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use std::net::SocketAddr;
    use std::time::Duration;

    use axum::Router;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn http1_with_the_peer_address_and_no_h2c() {
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/peer", l.local_addr().unwrap());
        let stop = CancellationToken::new();
        let server = tokio::spawn(super::serve(l, app, stop.clone()));
        let got = reqwest::get(&url).await.unwrap().text().await.unwrap();
        assert_eq!(got, "127.0.0.1");
        // A client speaking h2c (prior knowledge) gets no answer.
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        assert!(h2.get(&url).send().await.is_err());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
