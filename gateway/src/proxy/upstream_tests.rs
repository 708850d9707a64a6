#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, Request};
use axum::routing::post;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Proto, Upstream};
use crate::config::Config;

fn config(h2c: bool) -> Config {
    let mut c = Config::default();
    c.registration.allow_private_endpoints = true;
    c.upstream.h2c = h2c;
    c
}

/// Our kind of provider: axum's server, which takes HTTP/1.1 and h2c alike. It
/// answers with the HTTP version the request came in.
async fn axum_provider() -> String {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|r: Request<axum::body::Body>| async move { format!("{:?}", r.version()) }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

/// A server that speaks HTTP/1.1 only: whatever head it reads (the h2c preface
/// included) gets an HTTP/1.1 answer, then the connection closes.
async fn http1_only_provider() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "HTTP/1.1";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

/// Calls `endpoint` until the probe has settled (at most 10 s); returns what the
/// calls use then.
async fn settle(up: &Arc<Upstream>, endpoint: &str) -> Proto {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let probing = matches!(
            up.learned.lock().get(endpoint),
            Some(super::Learned::Probing(_)) | None
        );
        if !probing || Instant::now() > until {
            return up.choose(endpoint, Instant::now());
        }
        up.choose(endpoint, Instant::now());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn call(up: &Arc<Upstream>, endpoint: &str) -> String {
    let url = reqwest::Url::parse(&format!("{endpoint}/v1/chat/completions")).unwrap();
    up.post(endpoint, url, HeaderMap::new(), Bytes::from_static(b"{}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_h2c_provider_is_learned_and_called_in_http2() {
    let up = Upstream::new(&config(true)).unwrap();
    let ep = axum_provider().await;
    // The first call goes in HTTP/1.1 while the probe runs.
    assert_eq!(up.choose(&ep, Instant::now()), Proto::Http1);
    assert_eq!(settle(&up, &ep).await, Proto::H2c);
    assert_eq!(call(&up, &ep).await, "HTTP/2.0");
    // A failed call forgets it: the next goes in HTTP/1.1 and probes again.
    up.failed(&ep);
    assert_eq!(up.choose(&ep, Instant::now()), Proto::Http1);
    assert_eq!(call(&up, &ep).await, "HTTP/1.1");
    assert_eq!(settle(&up, &ep).await, Proto::H2c);
}

#[tokio::test]
async fn an_http1_only_provider_stays_on_http1() {
    let up = Upstream::new(&config(true)).unwrap();
    let ep = http1_only_provider().await;
    assert_eq!(settle(&up, &ep).await, Proto::Http1);
    assert!(matches!(
        up.learned.lock().get(&ep),
        Some(super::Learned::Http1Until(_))
    ));
    assert_eq!(call(&up, &ep).await, "HTTP/1.1");
    // Probed again only after the retry interval.
    let later = Instant::now() + super::RETRY_HTTP1 + Duration::from_secs(1);
    assert_eq!(up.choose(&ep, later), Proto::Http1);
    assert!(matches!(
        up.learned.lock().get(&ep),
        Some(super::Learned::Probing(_))
    ));
}

#[tokio::test]
async fn h2c_off_and_https_are_never_probed() {
    let off = Upstream::new(&config(false)).unwrap();
    let ep = axum_provider().await;
    for _ in 0..3 {
        assert_eq!(off.choose(&ep, Instant::now()), Proto::Http1);
    }
    assert_eq!(call(&off, &ep).await, "HTTP/1.1");
    let on = Upstream::new(&config(true)).unwrap();
    assert_eq!(
        on.choose("https://provider.example", Instant::now()),
        Proto::Http1
    );
    assert!(off.learned.lock().is_empty() && on.learned.lock().is_empty());
}

#[tokio::test]
async fn an_unreachable_endpoint_is_forgotten_not_pinned() {
    let up = Upstream::new(&config(true)).unwrap();
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    up.choose(&ep, Instant::now());
    let until = Instant::now() + Duration::from_secs(10);
    while up.learned.lock().contains_key(&ep) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!up.learned.lock().contains_key(&ep));
    assert_eq!(up.probes.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The attack of an h2c review: callers that stop reading their streams must not
/// freeze the provider's shared connection for everyone else.
#[tokio::test]
async fn streams_nobody_reads_do_not_stall_the_providers_connection() {
    let app = Router::new()
        .route(
            "/big",
            post(|| async { axum::body::Body::from(vec![b'x'; 4 << 20]) }),
        )
        .route("/v1/chat/completions", post(|| async { "small" }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let up = Upstream::new(&config(true)).unwrap();
    assert_eq!(settle(&up, &ep).await, Proto::H2c);
    // Four answers of 4 MiB each, their heads received and their bodies never read
    // (hyper's default windows froze the connection after ~5 MiB of these).
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let url = reqwest::Url::parse(&format!("{ep}/big")).unwrap();
        let r = up
            .post(&ep, url, HeaderMap::new(), Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        stalled.push(r);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = tokio::time::timeout(Duration::from_secs(10), call(&up, &ep)).await;
    assert_eq!(
        other.expect("another caller's request stalled").as_str(),
        "small"
    );
    drop(stalled);
}
