//! `hf://` downloads against a small HTTP file server on 127.0.0.1 that serves a
//! generated 3 MB file with Range support and can drop the first response half way.
#![cfg(feature = "download")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tenzro_models::download::{DownloadError, FetchOptions, ModelSource, fetch};

const FILE_PATH: &str = "/owner/repo/resolve/main/weights.gguf";
const SOURCE: &str = "hf://owner/repo/weights.gguf";
const SIZE: usize = 3 * 1024 * 1024 + 12_345;

/// What the fake hub does.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Send full headers but only half the body on the first request, then hang up.
    drop_first_half: bool,
    /// Answer every request with 200 and the whole file, as if Range did not exist.
    ignore_range: bool,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
    status: u16,
}

struct Server {
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(data: Arc<Vec<u8>>, behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            // One connection at a time is all the client uses; errors only end it.
            let _ = handle(stream, &data, behaviour, &log);
        }
    });
    Server { endpoint, seen }
}

fn handle(
    mut stream: TcpStream,
    data: &[u8],
    behaviour: Behaviour,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }

    let first_file_request = {
        let log = log.lock().unwrap();
        !log.iter().any(|s| s.path == FILE_PATH)
    };
    if path != FILE_PATH {
        log.lock().unwrap().push(Seen {
            path,
            range,
            status: 404,
        });
        let body = "Entry not found";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return stream.flush();
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|_| !behaviour.ignore_range);
    let (status, head, body) = match start {
        Some(start) => (
            206,
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\n",
                data.len() - 1,
                data.len(),
                data.len() - start
            ),
            &data[start..],
        ),
        None => (
            200,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n",
                data.len()
            ),
            data,
        ),
    };
    log.lock().unwrap().push(Seen {
        path,
        range,
        status,
    });
    stream.write_all(head.as_bytes())?;
    stream.write_all(b"Connection: close\r\n\r\n")?;
    if behaviour.drop_first_half && first_file_request {
        stream.write_all(&body[..body.len() / 2])?;
        stream.flush()?;
        return stream.shutdown(Shutdown::Both);
    }
    stream.write_all(body)?;
    stream.flush()
}

/// Deterministic bytes that do not compress or repeat.
fn generated() -> Arc<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    Arc::new(data)
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn cache_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tenzro-download-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(server: &Server, expected: Option<String>) -> FetchOptions {
    FetchOptions {
        endpoint: Some(server.endpoint.clone()),
        expected_sha256: expected,
        progress: false,
        max_retries: 3,
        initial_backoff: Duration::from_millis(10),
        read_timeout: Duration::from_secs(10),
    }
}

fn source() -> ModelSource {
    SOURCE.parse().unwrap()
}

fn partial_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial", path.display()))
}

#[test]
fn dropped_connection_resumes_with_range_and_verifies() {
    let data = generated();
    let digest = sha256(&data);
    let server = serve(
        Arc::clone(&data),
        Behaviour {
            drop_first_half: true,
            ..Behaviour::default()
        },
    );
    let dir = cache_dir("resume");
    let mut opts = options(&server, Some(digest.clone()));
    opts.progress = true;

    let path = fetch(&source(), &dir, &opts).unwrap();
    assert_eq!(path, dir.join("owner/repo/main/weights.gguf"));
    assert_eq!(sha256(&std::fs::read(&path).unwrap()), digest);
    assert!(!partial_of(&path).exists());

    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    let resumed_at: usize = seen[1]
        .range
        .as_deref()
        .unwrap()
        .strip_prefix("bytes=")
        .unwrap()
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(
        resumed_at > 0 && resumed_at <= SIZE / 2,
        "resumed at {resumed_at}"
    );
    assert_eq!(seen[1].status, 206);

    // A cached file with the right digest needs no request.
    assert_eq!(fetch(&source(), &dir, &opts).unwrap(), path);
    assert_eq!(server.seen().len(), 2);

    // A corrupted cached file is fetched again.
    std::fs::write(&path, b"not the weights").unwrap();
    assert_eq!(fetch(&source(), &dir, &opts).unwrap(), path);
    assert_eq!(sha256(&std::fs::read(&path).unwrap()), digest);
    assert_eq!(server.seen().len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_digest_is_refused_and_leaves_no_file() {
    let data = generated();
    let server = serve(Arc::clone(&data), Behaviour::default());
    let dir = cache_dir("mismatch");
    let wrong = "0".repeat(64);

    let err = fetch(&source(), &dir, &options(&server, Some(wrong.clone()))).unwrap_err();
    assert!(matches!(err, DownloadError::DigestMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&wrong) && message.contains(&sha256(&data)),
        "{message}"
    );
    assert!(message.contains("refusing to serve"), "{message}");
    let dest = dir.join("owner/repo/main/weights.gguf");
    assert!(!dest.exists());
    assert!(!partial_of(&dest).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn server_ignoring_range_still_yields_the_right_file() {
    let data = generated();
    let digest = sha256(&data);
    let server = serve(
        Arc::clone(&data),
        Behaviour {
            drop_first_half: true,
            ignore_range: true,
        },
    );
    let dir = cache_dir("ignore-range");

    let path = fetch(&source(), &dir, &options(&server, Some(digest.clone()))).unwrap();
    assert_eq!(sha256(&std::fs::read(&path).unwrap()), digest);
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].range.is_some(), "the client asked to resume");
    assert_eq!(
        seen[1].status, 200,
        "the server sent the whole file instead"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_is_a_clear_404_without_retries() {
    let server = serve(generated(), Behaviour::default());
    let dir = cache_dir("404");
    let missing: ModelSource = "hf://owner/repo@v1/nope.gguf".parse().unwrap();

    let err = fetch(&missing, &dir, &options(&server, None)).unwrap_err();
    assert!(matches!(err, DownloadError::NotFound { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("404") && message.contains("/owner/repo/resolve/v1/nope.gguf"),
        "{message}"
    );
    assert_eq!(server.seen().len(), 1);
    assert!(!dir.join("owner/repo/v1/nope.gguf.partial").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn local_sources_are_checked_not_copied() {
    let dir = cache_dir("local");
    let file = dir.join("w.gguf");
    std::fs::write(&file, b"abc").unwrap();
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let local = ModelSource::Local(file.clone());
    let opts = |expected: &str| FetchOptions {
        expected_sha256: Some(expected.to_owned()),
        ..FetchOptions::default()
    };

    assert_eq!(fetch(&local, &dir, &opts(abc)).unwrap(), file);
    let err = fetch(&local, &dir, &opts(&"1".repeat(64))).unwrap_err();
    assert!(matches!(err, DownloadError::DigestMismatch { .. }), "{err}");
    let missing = ModelSource::Local(dir.join("absent.gguf"));
    assert!(matches!(
        fetch(&missing, &dir, &FetchOptions::default()),
        Err(DownloadError::LocalMissing(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
