//! Schema registries for the tests.
//!
//! - [`Registry`]: the real one, Apicurio Registry 2.6.13 that `integration-tests/bin/registry
//!   up` starts (`run-all` does, and sets `TEST_SCHEMA_REGISTRY_URL` to its Confluent API), with
//!   feature `real-registry`; without it (a plain `cargo test`, no services) the stand-in below.
//!   Tests register schemas over the Confluent API and use the ids the registry gives.
//! - [`TestRegistry`]: a small Confluent-compatible stand-in, in process: the documented
//!   endpoints Lakewire and test producers use, `POST /subjects/{subject}/versions` (register,
//!   returns `{"id"}`), `GET /schemas/ids/{id}`, `GET /subjects`,
//!   `GET /subjects/{subject}/versions/latest`, with Confluent's error bodies (404 with
//!   `error_code` 40403 / 40401). It can be switched "down" (503): the fault a real registry
//!   cannot be made to show on cue. [`TestRegistry::proxy`] puts that switch in front of the
//!   real registry instead (every request forwarded while up).

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

/// A running stand-in registry; it stops when the test's runtime ends.
#[derive(Clone)]
pub struct TestRegistry {
    pub url: String,
    state: Arc<Mutex<State>>,
    down: Arc<AtomicBool>,
    /// With [`TestRegistry::proxy`]: the registry every request is forwarded to while up.
    upstream: Option<String>,
    /// `GET /schemas/ids/..` requests answered so far.
    pub id_requests: Arc<AtomicUsize>,
}

impl TestRegistry {
    /// Starts one on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        Self::listen(None).await
    }

    /// Starts a proxy to the registry at `upstream` (a base URL such as
    /// `http://127.0.0.1:8081/apis/ccompat/v7`) that [`TestRegistry::set_down`] can switch off.
    pub async fn proxy(upstream: &str) -> anyhow::Result<Self> {
        Self::listen(Some(upstream.trim_end_matches('/').to_string())).await
    }

    async fn listen(upstream: Option<String>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let reg = Self {
            url: format!("http://{}", listener.local_addr()?),
            state: Arc::default(),
            down: Arc::default(),
            upstream,
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
                    let request = &buf[end + 4..end + 4 + len];
                    let (status, body) = match &self.upstream {
                        Some(up) if !self.down.load(Ordering::SeqCst) => {
                            forward(up, method, path, request).await
                        }
                        _ => {
                            let (status, body) = self.answer(method, path, request);
                            (status, body.to_string())
                        }
                    };
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

/// `method path` with `body` sent on to `upstream`; its status and body (502 when it cannot be
/// reached).
async fn forward(upstream: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let client = reqwest::Client::new();
    let url = format!("{upstream}{path}");
    let req = match method {
        "POST" => client
            .post(&url)
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(body.to_vec()),
        _ => client.get(&url),
    };
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
        Err(e) => (
            502,
            json!({"error_code": 50201, "message": e.to_string()}).to_string(),
        ),
    }
}

/// The default URL of the registry `integration-tests/bin/registry up` starts.
const REAL_DEFAULT: &str = "http://127.0.0.1:8081/apis/ccompat/v7";

/// The schema registry of a test: the real one with feature `real-registry`
/// (`TEST_SCHEMA_REGISTRY_URL`, else [`REAL_DEFAULT`]), else a [`TestRegistry`].
pub struct Registry {
    pub url: String,
    client: reqwest::Client,
    /// The stand-in, kept running while this lives.
    _stand_in: Option<TestRegistry>,
}

impl Registry {
    /// The real registry (checked to answer), or a new stand-in without `real-registry`.
    pub async fn start() -> anyhow::Result<Self> {
        let client = reqwest::Client::new();
        if !cfg!(feature = "real-registry") {
            let stand_in = TestRegistry::start().await?;
            return Ok(Self {
                url: stand_in.url.clone(),
                client,
                _stand_in: Some(stand_in),
            });
        }
        let url = std::env::var("TEST_SCHEMA_REGISTRY_URL")
            .unwrap_or_else(|_| REAL_DEFAULT.to_string())
            .trim_end_matches('/')
            .to_string();
        let answer = client.get(format!("{url}/subjects")).send().await;
        anyhow::ensure!(
            answer.as_ref().is_ok_and(|r| r.status().is_success()),
            "no schema registry answers at {url} ({answer:?}): start one with \
             `integration-tests/bin/registry up` (run-all does)"
        );
        Ok(Self {
            url,
            client,
            _stand_in: None,
        })
    }

    /// Registers the Avro schema `schema` under `subject`; the id the registry gives it.
    pub async fn register(&self, subject: &str, schema: &str) -> anyhow::Result<u32> {
        self.register_as(subject, json!({ "schema": schema })).await
    }

    /// Registers `request` (`{"schema", "schemaType"?, "references"?}`) under `subject`.
    pub async fn register_as(&self, subject: &str, request: Value) -> anyhow::Result<u32> {
        let resp = self
            .client
            .post(format!("{}/subjects/{subject}/versions", self.url))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(request.to_string())
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "register {subject}: {status} {body}");
        body["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| anyhow::anyhow!("register {subject}: no id in {body}"))
    }

    /// The id the next new schema will get (a schema registered to find out takes the one
    /// before it). Holds only while nothing else registers meanwhile: check the id given.
    pub async fn next_id(&self) -> anyhow::Result<u32> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let probe = json!({"type": "record", "name": format!("Probe{nanos}"), "fields": []});
        Ok(self
            .register(&format!("probe-{nanos}"), &probe.to_string())
            .await?
            + 1)
    }

    /// The subjects the registry has.
    pub async fn subjects(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .client
            .get(format!("{}/subjects", self.url))
            .send()
            .await?
            .json()
            .await?)
    }
}
