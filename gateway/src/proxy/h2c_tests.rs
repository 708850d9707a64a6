#![expect(clippy::unwrap_used, reason = "tests")]
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, Request};
use axum::routing::post;
use bytes::Bytes;
use futures::StreamExt;

use super::H2c;
use crate::proxy::error_chain;

/// A provider that answers with what it got: the version, the headers the test
/// looks at, and the body; `/big` answers 1 MiB, more than a stream's window.
async fn provider() -> String {
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(|r: Request<axum::body::Body>| async move {
                let h = r.headers();
                let seen = format!(
                    "{:?} accept={:?} length={:?} type={:?} id={:?} body=",
                    r.version(),
                    h.get("accept"),
                    h.get("content-length"),
                    h.get("content-type"),
                    h.get("x-request-id"),
                );
                let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
                format!("{seen}{}", String::from_utf8_lossy(&body))
            }),
        )
        .route("/big", post(|| async { vec![b'x'; 1 << 20] }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

fn client() -> Arc<H2c> {
    Arc::new(H2c::new(Duration::from_secs(2), false, 64 * 1024, 1 << 20))
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("x-request-id", HeaderValue::from_static("req-1"));
    h
}

#[tokio::test]
async fn a_request_goes_in_h2c_with_reqwests_headers_on_one_connection() {
    let (h2c, endpoint) = (client(), provider().await);
    let url = reqwest::Url::parse(&format!("{endpoint}/v1/chat/completions")).unwrap();
    for _ in 0..3 {
        let r = h2c
            .post(&endpoint, &url, headers(), Bytes::from_static(b"{\"a\":1}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.url(), &url);
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(
            r.text().await.unwrap(),
            "HTTP/2.0 accept=Some(\"*/*\") length=Some(\"7\") \
             type=Some(\"application/json\") id=Some(\"req-1\") body={\"a\":1}"
        );
    }
    let conns = h2c.conns.lock();
    assert_eq!(conns.len(), 1);
    assert_eq!(
        conns.values().next().unwrap().id,
        0,
        "one connection, reused"
    );
}

/// An answer larger than the stream's and the connection's windows arrives
/// whole: its window is released as it is read.
#[tokio::test]
async fn a_long_answer_is_read_through_the_windows() {
    let (h2c, endpoint) = (client(), provider().await);
    let url = reqwest::Url::parse(&format!("{endpoint}/big")).unwrap();
    for _ in 0..2 {
        let r = h2c
            .post(&endpoint, &url, HeaderMap::new(), Bytes::new())
            .await
            .unwrap();
        let mut stream = r.bytes_stream();
        let mut n = 0;
        while let Some(piece) = stream.next().await {
            n += piece.unwrap().len();
        }
        assert_eq!(n, 1 << 20);
    }
}

/// No server: the error reads as reqwest's did, and nothing is kept.
#[tokio::test]
async fn a_refused_connection_is_an_error_naming_the_url() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let h2c = client();
    let url = reqwest::Url::parse(&format!("{endpoint}/v1/chat/completions")).unwrap();
    let e = h2c
        .post(&endpoint, &url, headers(), Bytes::new())
        .await
        .unwrap_err();
    let text = error_chain(&*e);
    assert!(
        text.starts_with(&format!("error sending request for url ({url}): ")),
        "{text}"
    );
    assert!(h2c.conns.lock().is_empty());
}

/// A provider that closes each connection after one answer (GOAWAY): the
/// closed connection is forgotten and the next request opens another.
#[tokio::test]
async fn a_closed_connection_is_replaced() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            if let Some(Ok((_, mut respond))) = conn.accept().await {
                let answer = axum::http::Response::new(());
                let mut body = respond.send_response(answer, false).unwrap();
                body.send_data(Bytes::from_static(b"ok"), true).unwrap();
            }
            conn.graceful_shutdown();
            while conn.accept().await.is_some() {}
        }
    });
    let h2c = client();
    let url = reqwest::Url::parse(&format!("{endpoint}/v1/chat/completions")).unwrap();
    for id in 0..2 {
        let r = h2c.post(&endpoint, &url, headers(), Bytes::new()).await;
        assert_eq!(r.unwrap().text().await.unwrap(), "ok");
        for _ in 0..200 {
            if h2c.conns.lock().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(h2c.conns.lock().is_empty(), "connection {id} is forgotten");
    }
    assert_eq!(h2c.next_id.load(std::sync::atomic::Ordering::Relaxed), 2);
}
