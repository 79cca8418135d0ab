//! HTTP stage: the routes of the gateway's listener. Input: HTTP requests; output: the dashboard
//! at `/` (and `/client.js`, its assets), WebSocket sessions at `/ws`, server-sent events at `/sse`, `/api/topics`, `/metrics`, `/healthz` and
//! `/readyz`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::app::Services;
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
    let metrics = warp::path!("metrics").and(warp::get()).map({
        let services = services.clone();
        move || {
            warp::reply::with_header(
                crate::metrics::render(&services.registry),
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
    });
    let topics = warp::path!("api" / "topics").and(warp::get()).map({
        let services = services.clone();
        move || warp::reply::json(&topic_list(&services))
    });
    let sse = warp::path!("sse")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::sse::last_event_id::<String>())
        .then({
            let services = services.clone();
            let shutdown = shutdown.clone();
            move |query, last| crate::sse::serve(services.clone(), query, last, shutdown.clone())
        });
    let max_frame = services.config.websocket.max_frame_bytes;
    let ws = warp::path!("ws")
        .and(warp::ws())
        .map(move |ws: warp::ws::Ws| {
            let services = services.clone();
            let cancel = shutdown.child_token();
            ws.max_message_size(max_frame)
                .max_frame_size(max_frame)
                .on_upgrade(move |socket| {
                    let tracker = services.sessions.clone();
                    tracker.track_future(async move {
                        session::run(socket, services, cancel).await;
                    })
                })
        });
    index
        .or(healthz)
        .or(readyz)
        .or(metrics)
        .or(topics)
        .or(ws)
        .or(sse)
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

fn topic_list(services: &Services) -> Vec<TopicInfo<'_>> {
    services
        .config
        .topics
        .iter()
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

/// Ready when Kafka answers and every topic's live consumer is assigned.
async fn readiness(services: Arc<Services>) -> warp::reply::WithStatus<warp::reply::Json> {
    let topics_not_assigned: Vec<String> = services
        .hub
        .topics()
        .filter(|t| t.assigned().is_none())
        .map(|t| t.name().to_string())
        .collect();
    let kafka_reachable = services.kafka.reachable().await;
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
