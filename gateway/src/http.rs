//! HTTP stage: the routes of the gateway's listener. Input: HTTP requests; output: the dashboard
//! at `/` (and `/client.js`, its assets), WebSocket sessions at `/ws`, server-sent events at `/sse`, `/api/topics`, `/metrics`, `/healthz` and
//! `/readyz`; the admin listener's `/metrics`, `/healthz` and `/readyz`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::auth::Access;
use crate::services::{ConnGuard, Refused, Services};
use crate::session;

/// The dashboard and the JavaScript client, embedded in the binary: path, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("client.js", JS, include_str!("../web/lakewire-client.js")),
    ("dashboard.js", JS, include_str!("../web/dashboard.js")),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../web/dashboard.css"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";
const INDEX: &str = include_str!("../web/index.html");

/// `/` and the assets; the dashboard's scripts are all same-origin, so a strict policy fits.
fn dashboard() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let index = warp::path::end().and(warp::get()).map(|| {
        warp::reply::with_header(
            warp::reply::html(INDEX),
            "content-security-policy",
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:",
        )
    });
    let asset = warp::path::param::<String>()
        .and(warp::path::end())
        .and(warp::get())
        .and_then(|name: String| async move {
            match ASSETS.iter().find(|(n, _, _)| *n == name) {
                Some((_, ty, body)) => Ok(warp::reply::with_header(*body, "content-type", *ty)),
                None => Err(warp::reject::not_found()),
            }
        });
    index.or(asset)
}

/// The routes of a `--role sink` process: `/healthz`, `/readyz` (200 while the sink worker
/// runs), `/metrics`.
pub fn sink_routes(
    services: Arc<Services>,
    sink: crate::sink::SinkHandle,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok");
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        if sink.alive.load(std::sync::atomic::Ordering::Relaxed) {
            warp::reply::with_status("ok", warp::http::StatusCode::OK)
        } else {
            warp::reply::with_status("sink stopped", warp::http::StatusCode::SERVICE_UNAVAILABLE)
        }
    });
    healthz.or(readyz).or(metrics(services))
}

/// `/metrics`: every metric, in the OpenMetrics text format.
fn metrics(
    services: Arc<Services>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(
            crate::metrics::render(&services.prometheus),
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    })
}

/// The routes of `websocket.admin_listen`: `/healthz`, `/readyz` and `/metrics`.
pub fn admin_routes(
    services: Arc<Services>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok");
    let readyz = warp::path!("readyz").and(warp::get()).then({
        let services = services.clone();
        move || readiness(services.clone())
    });
    healthz.or(readyz).or(metrics(services))
}

/// All routes of the listener.
pub fn routes(
    services: Arc<Services>,
    shutdown: CancellationToken,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let index = dashboard();
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok");
    let readyz = warp::path!("readyz").and(warp::get()).then({
        let services = services.clone();
        move || readiness(services.clone())
    });
    // `websocket.public_metrics = false`: `/metrics` only on the admin listener.
    let public_metrics = services.config.websocket.public_metrics;
    let metrics = warp::any()
        .and_then(move || async move {
            if public_metrics {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(metrics(services.clone()));
    let topics = warp::path!("api" / "topics")
        .and(warp::get())
        .and(caller())
        .then({
            let services = services.clone();
            move |caller: Caller| {
                let services = services.clone();
                async move {
                    match authorize(&services, &caller).await {
                        Ok(access) => Box::new(warp::reply::json(&topic_list(&services, &access)))
                            as Box<dyn Reply>,
                        Err(refusal) => refusal,
                    }
                }
            }
        });
    let sse = warp::path!("sse")
        .and(warp::get())
        .and(caller())
        .and(warp::sse::last_event_id::<String>())
        .and(warp::ext::optional::<crate::listener::CutReason>())
        .then({
            let services = services.clone();
            let shutdown = shutdown.clone();
            move |mut caller: Caller, last, cut| {
                let services = services.clone();
                let shutdown = shutdown.clone();
                async move {
                    let (access, guard) = match admit(&services, &caller).await {
                        Ok(admitted) => admitted,
                        Err(refusal) => return refusal,
                    };
                    caller.query.remove("token");
                    crate::sse::serve(services, caller.query, last, shutdown, access, guard, cut)
                        .await
                }
            }
        });
    let config = ws_config(services.config.websocket.max_frame_bytes);
    // `warp::ws()` checks the upgrade request (and rejects what is not one, as before); the
    // upgrade itself is done here, on hyper's `OnUpgrade` (taken before `warp::ws()` removes
    // it), so that the WebSocket gets our `WebSocketConfig`: warp cannot set the read buffer,
    // and tungstenite's default keeps 128 KiB per connection resident.
    let max_frame = services.config.websocket.max_frame_bytes;
    let deflate_on = services.config.websocket.permessage_deflate;
    let ws = warp::path!("ws")
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::header::optional::<String>("sec-websocket-key"))
        .and(warp::header::headers_cloned())
        .and(warp::ws())
        .and(caller())
        .then(
            move |on_upgrade: Option<OnUpgrade>,
                  key: Option<String>,
                  headers: warp::http::HeaderMap,
                  _checked: warp::ws::Ws,
                  caller: Caller| {
                let services = services.clone();
                let cancel = shutdown.child_token();
                async move {
                    let (access, guard) = match admit(&services, &caller).await {
                        Ok(admitted) => admitted,
                        Err(refusal) => return refusal,
                    };
                    let (Some(on_upgrade), Some(key)) = (on_upgrade, key) else {
                        // warp::ws() accepted it, so both are there; a connection that cannot
                        // be upgraded (HTTP/2) ends up here.
                        return Box::new(warp::reply::with_status(
                            "this connection cannot be upgraded to a WebSocket",
                            StatusCode::BAD_REQUEST,
                        )) as Box<dyn Reply>;
                    };
                    // RFC 7692: the first offer the gateway can honour exactly, if any.
                    let deflate = if deflate_on {
                        crate::deflate::negotiate(
                            headers
                                .get_all("sec-websocket-extensions")
                                .iter()
                                .filter_map(|v| v.to_str().ok()),
                        )
                    } else {
                        None
                    };
                    let tracker = services.sessions.clone();
                    tokio::spawn(tracker.track_future(async move {
                        match on_upgrade.await {
                            Ok(upgraded) => {
                                let written = session::Written::default();
                                let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                                    crate::deflate::Inflating::new(
                                        session::CountWrites::new(
                                            hyper_util::rt::TokioIo::new(upgraded),
                                            written.clone(),
                                        ),
                                        deflate.is_some(),
                                        max_frame,
                                    ),
                                    tungstenite::protocol::Role::Server,
                                    Some(config),
                                )
                                .await;
                                let wire = session::Wire {
                                    written,
                                    deflate: deflate.is_some(),
                                };
                                session::run(socket, wire, services, cancel, access).await;
                            }
                            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
                        }
                        drop(guard);
                    }));
                    let mut reply = warp::http::Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "upgrade")
                        .header("upgrade", "websocket")
                        .header(
                            "sec-websocket-accept",
                            tungstenite::handshake::derive_accept_key(key.as_bytes()),
                        );
                    // A browser that offered subprotocols (e.g. to carry its token) needs one
                    // back.
                    if let Some(p) = chosen_subprotocol(caller.subprotocols.as_deref()) {
                        reply = reply.header("sec-websocket-protocol", p);
                    }
                    if let Some(agreed) = deflate {
                        reply = reply.header("sec-websocket-extensions", agreed);
                    }
                    match reply.body("") {
                        Ok(r) => Box::new(r) as Box<dyn Reply>,
                        Err(e) => Box::new(warp::reply::with_status(
                            e.to_string(),
                            StatusCode::BAD_REQUEST,
                        )),
                    }
                }
            },
        );
    index
        .or(healthz)
        .or(readyz)
        .or(metrics)
        .or(topics)
        .or(ws)
        .or(sse)
}

/// Each connection's WebSocket settings: the gateway's frame limit, and small buffers. The read
/// buffer is what tungstenite zero-fills and keeps for every connection (128 KiB by default);
/// clients send a few small messages, so 4 KiB per read is plenty. Writes are still gathered
/// up to 64 KiB before they reach the socket (a batch of frames is one write).
pub fn ws_config(max_frame: usize) -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// Who is asking: what auth and the connection limits look at.
#[derive(Debug, Clone)]
pub struct Caller {
    pub ip: Option<IpAddr>,
    pub origin: Option<String>,
    pub authorization: Option<String>,
    pub subprotocols: Option<String>,
    pub query: HashMap<String, String>,
}

fn caller() -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    warp::ext::optional::<crate::listener::ClientAddr>()
        .map(|addr: Option<crate::listener::ClientAddr>| addr.map(|a| a.0))
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and(warp::query::<HashMap<String, String>>())
        .map(
            |addr: Option<SocketAddr>, origin, authorization, subprotocols, query| Caller {
                ip: addr.map(|a| a.ip()),
                origin,
                authorization,
                subprotocols,
                query,
            },
        )
}

/// Checks the caller's Origin and token; the refusal is a ready HTTP reply.
async fn authorize(services: &Services, caller: &Caller) -> Result<Access, Box<dyn Reply>> {
    let auth = &services.auth;
    let checked = match auth.check_origin(caller.origin.as_deref()) {
        Ok(()) => {
            let token = crate::auth::token_from(
                caller.authorization.as_deref(),
                caller.subprotocols.as_deref(),
                caller.query.get("token").map(String::as_str),
            );
            auth.authenticate(token.as_deref()).await
        }
        Err(e) => Err(e),
    };
    checked.map_err(|e| {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let body = warp::reply::json(&serde_json::json!({
            "error": e.reason(),
            "message": e.to_string(),
        }));
        let reply = warp::reply::with_status(body, status);
        if e.status() == 401 {
            Box::new(warp::reply::with_header(
                reply,
                "www-authenticate",
                "Bearer",
            )) as Box<dyn Reply>
        } else {
            Box::new(reply)
        }
    })
}

/// Authorizes a streaming connection and takes its place under the connection limits.
async fn admit(
    services: &Arc<Services>,
    caller: &Caller,
) -> Result<(Access, ConnGuard), Box<dyn Reply>> {
    let access = authorize(services, caller).await?;
    let guard = services.admit(caller.ip).map_err(refused)?;
    Ok((access, guard))
}

fn refused(r: Refused) -> Box<dyn Reply> {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    Box::new(warp::reply::with_status(
        warp::reply::json(&serde_json::json!({
            "error": r.reason,
            "message": "connection limit reached",
        })),
        status,
    ))
}

/// The subprotocol to answer with: `lakewire.v1` when offered, else the first one offered.
fn chosen_subprotocol(offered: Option<&str>) -> Option<String> {
    let offered: Vec<&str> = offered?.split(',').map(str::trim).collect();
    offered
        .iter()
        .find(|p| **p == "lakewire.v1")
        .or_else(|| offered.first())
        .map(|p| (*p).to_string())
}

#[derive(Serialize)]
struct TopicInfo<'a> {
    name: &'a str,
    format: String,
    partitions: Option<Vec<i32>>,
    /// The value's fields when the topic has a fixed Avro schema; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<Vec<crate::decode::schema::FieldInfo>>,
}

fn topic_list<'a>(services: &'a Services, access: &Access) -> Vec<TopicInfo<'a>> {
    services
        .config
        .topics
        .iter()
        .filter(|t| access.allows(&t.name))
        .map(|t| TopicInfo {
            name: &t.name,
            format: t.format.to_string(),
            partitions: services.hub.topic(&t.name).and_then(|h| h.assigned()),
            fields: services
                .decoders
                .get(&t.name)
                .and_then(|d| d.value_fields()),
        })
        .collect()
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    kafka_reachable: bool,
    topics_not_assigned: Vec<String>,
}

/// Ready when Kafka answered the last background check and every topic's live consumer is
/// assigned.
async fn readiness(services: Arc<Services>) -> warp::reply::WithStatus<warp::reply::Json> {
    let topics_not_assigned: Vec<String> = services
        .hub
        .topics()
        .filter(|t| t.assigned().is_none())
        .map(|t| t.name().to_string())
        .collect();
    let kafka_reachable = services.kafka.reachable();
    let ready = kafka_reachable && topics_not_assigned.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(
        warp::reply::json(&Readiness {
            ready,
            kafka_reachable,
            topics_not_assigned,
        }),
        status,
    )
}
