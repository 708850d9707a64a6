//! A small hub on 127.0.0.1 that speaks what the downloader uses of the Hugging Face
//! Hub: `HEAD`/`GET {owner}/{repo}/resolve/{revision}/{file}` with `X-Repo-Commit`,
//! `ETag`/`X-Linked-Etag`/`X-Linked-Size` and `Range`, and
//! `GET /api/models/{owner}/{repo}/revision/{revision}?blobs=true`. It logs every
//! request, and can drop a file's first response half way or serve wrong bytes.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use sha1::Sha1;
use sha2::Sha256;

/// One file of a repository; LFS files are etagged by SHA-256, others by git SHA-1.
#[derive(Clone)]
pub struct HubFile {
    pub bytes: Arc<Vec<u8>>,
    pub lfs: bool,
}

impl HubFile {
    pub fn etag(&self) -> String {
        if self.lfs {
            sha256(&self.bytes)
        } else {
            git_sha1(&self.bytes)
        }
    }
}

#[derive(Clone, Default)]
pub struct Repo {
    pub commit: String,
    pub files: BTreeMap<String, HubFile>,
}

/// What the hub does wrong.
#[derive(Clone, Default)]
pub struct Faults {
    /// Files whose first GET sends half the body, then hangs up.
    pub drop_first: HashSet<String>,
    /// Files served with every byte flipped (same length, same advertised digest).
    pub corrupt: HashSet<String>,
    /// Answer every GET with the whole file, ignoring Range.
    pub ignore_range: bool,
}

/// One request as the hub saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
}

pub struct Hub {
    pub endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Hub {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests for file bodies (GETs of resolve URLs).
    pub fn file_gets(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "GET" && s.path.contains("/resolve/"))
            .collect()
    }
}

pub fn serve(repos: BTreeMap<String, Repo>, faults: Faults) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            // The client uses one connection at a time; errors only end it.
            let _ = handle(stream, &repos, &faults, &log);
        }
    });
    Hub { endpoint, seen }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        _ => "Not Found",
    };
    write!(stream, "HTTP/1.1 {status} {reason}\r\n")?;
    for (name, value) in headers {
        write!(stream, "{name}: {value}\r\n")?;
    }
    write!(stream, "Connection: close\r\n\r\n")?;
    stream.write_all(body)?;
    stream.flush()
}

fn handle(
    mut stream: TcpStream,
    repos: &BTreeMap<String, Repo>,
    faults: &Faults,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("").to_owned();
    let path = words.next().unwrap_or("").to_owned();
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
    let first_get = !log
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.method == "GET" && s.path == path);
    let record = |status: u16| {
        log.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
            status,
        });
    };
    let not_found = |stream: &mut TcpStream| {
        let body = b"Entry not found";
        respond(
            stream,
            404,
            &[("Content-Length".into(), body.len().to_string())],
            body,
        )
    };

    if let Some(rest) = path.strip_prefix("/api/models/") {
        let (repo_rev, _query) = rest.split_once('?').unwrap_or((rest, ""));
        let Some((repo_id, revision)) = repo_rev.split_once("/revision/") else {
            record(404);
            return not_found(&mut stream);
        };
        let Some(repo) = repos
            .get(repo_id)
            .filter(|r| revision == "main" || revision == r.commit)
        else {
            record(404);
            return not_found(&mut stream);
        };
        record(200);
        let body = listing(repo_id, repo).into_bytes();
        return respond(
            &mut stream,
            200,
            &[
                ("Content-Type".into(), "application/json".into()),
                ("Content-Length".into(), body.len().to_string()),
            ],
            &body,
        );
    }

    // /{owner}/{repo}/resolve/{revision}/{file}
    let Some((repo_id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        record(404);
        return not_found(&mut stream);
    };
    let (revision, file) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(repo) = repos
        .get(repo_id)
        .filter(|r| revision == "main" || revision == r.commit)
    else {
        record(404);
        return not_found(&mut stream);
    };
    let Some(entry) = repo.files.get(file) else {
        record(404);
        return not_found(&mut stream);
    };
    let etag = entry.etag();
    let mut headers = vec![
        ("X-Repo-Commit".to_owned(), repo.commit.clone()),
        ("ETag".to_owned(), format!("\"{etag}\"")),
        ("Accept-Ranges".to_owned(), "bytes".to_owned()),
    ];
    if entry.lfs {
        headers.push(("X-Linked-Etag".into(), format!("\"{etag}\"")));
        headers.push(("X-Linked-Size".into(), entry.bytes.len().to_string()));
    }
    let data: Vec<u8> = if faults.corrupt.contains(file) {
        entry.bytes.iter().map(|b| !b).collect()
    } else {
        entry.bytes.to_vec()
    };
    if method == "HEAD" {
        record(200);
        headers.push(("Content-Length".into(), data.len().to_string()));
        return respond(&mut stream, 200, &headers, b"");
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|_| !faults.ignore_range);
    let (status, body) = match start {
        Some(start) => {
            headers.push((
                "Content-Range".into(),
                format!("bytes {start}-{}/{}", data.len() - 1, data.len()),
            ));
            (206, &data[start..])
        }
        None => (200, &data[..]),
    };
    headers.push(("Content-Length".into(), body.len().to_string()));
    record(status);
    if faults.drop_first.contains(file) && first_get {
        let reason = if status == 206 {
            "Partial Content"
        } else {
            "OK"
        };
        write!(stream, "HTTP/1.1 {status} {reason}\r\n")?;
        for (name, value) in &headers {
            write!(stream, "{name}: {value}\r\n")?;
        }
        write!(stream, "Connection: close\r\n\r\n")?;
        stream.write_all(&body[..body.len() / 2])?;
        stream.flush()?;
        return stream.shutdown(Shutdown::Both);
    }
    respond(&mut stream, status, &headers, body)
}

/// The API's answer: the commit and every file with its size, blob id and LFS data.
fn listing(repo_id: &str, repo: &Repo) -> String {
    let siblings: Vec<serde_json::Value> = repo
        .files
        .iter()
        .map(|(name, f)| {
            let mut s = serde_json::json!({
                "rfilename": name,
                "blobId": git_sha1(if f.lfs { b"pointer" } else { &f.bytes }),
                "size": if f.lfs { 132 } else { f.bytes.len() },
            });
            if f.lfs {
                s["lfs"] = serde_json::json!({
                    "sha256": sha256(&f.bytes), "size": f.bytes.len(), "pointerSize": 132
                });
            }
            s
        })
        .collect();
    serde_json::json!({"id": repo_id, "sha": repo.commit, "siblings": siblings}).to_string()
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(<Sha256 as sha2::Digest>::digest(data))
}

pub fn git_sha1(data: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = Sha1::new();
    sha1::Digest::update(&mut h, format!("blob {}\0", data.len()).as_bytes());
    sha1::Digest::update(&mut h, data);
    hex::encode(h.finalize())
}
