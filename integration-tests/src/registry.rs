//! A small Confluent-compatible schema registry for the tests, in process: the documented
//! endpoints Lakewire and test producers use, `POST /subjects/{subject}/versions` (register,
//! returns `{"id"}`), `GET /schemas/ids/{id}`, `GET /subjects`,
//! `GET /subjects/{subject}/versions/latest`, with Confluent's error bodies (404 with
//! `error_code` 40403 / 40401). It can be switched "down" (503) to test outages.
//!
//! It stands in for a real registry because none installs from the package registries this
//! project can reach (Karapace is not on PyPI; Confluent's registry is not on Maven Central).
//! A test uses a real one instead when `TEST_SCHEMA_REGISTRY_URL` is set.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    /// id -> schema text
    schemas: BTreeMap<u32, String>,
    /// subject -> ids, oldest first
    subjects: BTreeMap<String, Vec<u32>>,
}

/// A running registry; it stops when the test's runtime ends.
#[derive(Clone)]
pub struct TestRegistry {
    pub url: String,
    state: Arc<Mutex<State>>,
    down: Arc<AtomicBool>,
    /// `GET /schemas/ids/..` requests answered so far.
    pub id_requests: Arc<AtomicUsize>,
}

impl TestRegistry {
    /// Starts one on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let reg = Self {
            url: format!("http://{}", listener.local_addr()?),
            state: Arc::default(),
            down: Arc::default(),
            id_requests: Arc::default(),
        };
        let r = reg.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let r = r.clone();
                tokio::spawn(async move {
                    let _ = r.serve(sock).await;
                });
            }
        });
        Ok(reg)
    }

    /// Stores `schema` under the given id (as a registry restored from a backup would).
    pub fn put(&self, id: u32, subject: &str, schema: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.schemas.insert(id, schema.to_string());
            s.subjects.entry(subject.to_string()).or_default().push(id);
        }
    }

    /// While `down`, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn answer(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        if self.down.load(Ordering::SeqCst) {
            return (
                503,
                json!({"error_code": 50301, "message": "down for the test"}),
            );
        }
        let Ok(mut s) = self.state.lock() else {
            return (500, json!({"error_code": 50001, "message": "poisoned"}));
        };
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            ("GET", ["subjects"]) => (200, json!(s.subjects.keys().collect::<Vec<_>>())),
            ("GET", ["schemas", "ids", id]) => {
                self.id_requests.fetch_add(1, Ordering::SeqCst);
                match id.parse::<u32>().ok().and_then(|id| s.schemas.get(&id)) {
                    Some(schema) => (200, json!({ "schema": schema })),
                    None => (
                        404,
                        json!({"error_code": 40403, "message": "Schema not found"}),
                    ),
                }
            }
            ("GET", ["subjects", subject, "versions", "latest"]) => {
                match s
                    .subjects
                    .get(*subject)
                    .and_then(|ids| Some((ids.len(), *ids.last()?)))
                {
                    Some((version, id)) => (
                        200,
                        json!({"subject": subject, "version": version, "id": id,
                               "schema": s.schemas.get(&id)}),
                    ),
                    None => (
                        404,
                        json!({"error_code": 40401, "message": "Subject not found"}),
                    ),
                }
            }
            ("POST", ["subjects", subject, "versions"]) => {
                let Some(schema) = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v["schema"].as_str().map(str::to_string))
                else {
                    return (
                        422,
                        json!({"error_code": 42201, "message": "Invalid schema"}),
                    );
                };
                let existing = s
                    .schemas
                    .iter()
                    .find(|(_, t)| **t == schema)
                    .map(|(id, _)| *id);
                let id = existing.unwrap_or_else(|| s.schemas.keys().last().map_or(1, |k| k + 1));
                s.schemas.insert(id, schema);
                let ids = s.subjects.entry(subject.to_string()).or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
                (200, json!({ "id": id }))
            }
            _ => (
                404,
                json!({"error_code": 404, "message": "HTTP 404 Not Found"}),
            ),
        }
    }

    async fn serve(&self, mut sock: TcpStream) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
            if let Some(end) = head_end {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let mut words = head.split_whitespace();
                    let method = words.next().unwrap_or("");
                    let path = words.next().unwrap_or("");
                    let (status, body) = self.answer(method, path, &buf[end + 4..end + 4 + len]);
                    let body = body.to_string();
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    sock.write_all(reply.as_bytes()).await?;
                    return Ok(());
                }
            }
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}
