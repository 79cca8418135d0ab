//! SSE stage: the same stream as `/ws`, as server-sent events, for clients and proxies without
//! WebSocket. Input: `GET /sse?topic=..&filter=..&fields=..&from=..` (and `Last-Event-ID` to
//! resume); output: `subscribed`, `records`, `lagged`, `gap` events with the same JSON as the
//! WebSocket frames. Same hub, same queues, same slow-client policy.
//!
//! Each `records` event's id is the subscription's position: the next offset per partition,
//! `"0:43,1:17"`. A browser's `EventSource` sends the last one back as `Last-Event-ID` when it
//! reconnects, and the stream resumes exactly there.
//!
//! A client that stops reading is cut by the listener after `websocket.write_timeout_ms`
//! ([`crate::listener`]); every ending is counted in `lakewire_ws_closed_total` with the
//! reasons of a WebSocket's.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;

use futures_util::{Stream, stream};
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::sse::Event;

use crate::auth::Access;
use crate::hub::{ClientQueue, Next};
use crate::listener::CutReason;
use crate::protocol::{self, ErrorCode, ProtocolError, ServerMessage, StartFrom, Subscribe};
use crate::services::{ConnGuard, Services};
use crate::session::Ended;
use crate::subscribe::{self, ActiveSub};

/// The subscription id SSE streams use in their JSON (one subscription per stream).
const ID: &str = "sse";

/// Reads the request: query parameters and `Last-Event-ID`.
pub fn request(
    query: &HashMap<String, String>,
    last_event_id: Option<&str>,
) -> Result<Subscribe, ProtocolError> {
    let bad = |m: String| ProtocolError::new(None, ErrorCode::BadRequest, m);
    for k in query.keys() {
        if !matches!(k.as_str(), "topic" | "filter" | "fields" | "from" | "token") {
            return Err(bad(format!(
                "unknown query parameter {k:?}; use topic, filter, fields, from, token"
            )));
        }
    }
    let topic = query
        .get("topic")
        .cloned()
        .ok_or_else(|| bad("the `topic` query parameter is required".into()))?;
    let from = match last_event_id.map(str::trim).filter(|s| !s.is_empty()) {
        Some(id) => StartFrom::Offsets(parse_position(id).map_err(bad)?),
        None => match query.get("from").map(String::as_str) {
            None | Some("latest") => StartFrom::Latest,
            Some("earliest") => StartFrom::Earliest,
            Some(ms) => StartFrom::Timestamp(ms.parse().map_err(|_| {
                bad(format!(
                    "`from` must be latest, earliest or a time in ms since the epoch, not {ms:?}"
                ))
            })?),
        },
    };
    Ok(Subscribe {
        id: ID.to_string(),
        topic,
        filter: query.get("filter").cloned(),
        fields: query.get("fields").map(|f| {
            f.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        }),
        from,
    })
}

/// `"0:43,1:17"` → {0: 43, 1: 17}.
pub fn parse_position(s: &str) -> Result<BTreeMap<i32, i64>, String> {
    s.split(',')
        .map(|pair| {
            let (p, o) = pair
                .split_once(':')
                .ok_or_else(|| format!("Last-Event-ID {s:?} is not partition:offset,..."))?;
            let p: i32 = p
                .trim()
                .parse()
                .map_err(|_| format!("bad partition in {s:?}"))?;
            let o: i64 = o
                .trim()
                .parse()
                .map_err(|_| format!("bad offset in {s:?}"))?;
            if p < 0 || o < 0 {
                return Err(format!("negative partition or offset in {s:?}"));
            }
            Ok((p, o))
        })
        .collect()
}

/// {0: 43, 1: 17} → `"0:43,1:17"`.
pub fn format_position(position: &BTreeMap<i32, i64>) -> String {
    position
        .iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What a stream owns; dropping it (the client went away) ends the subscription.
struct SseState {
    services: Arc<Services>,
    queue: Arc<ClientQueue>,
    active: Option<ActiveSub>,
    cancel: CancellationToken,
    position: BTreeMap<i32, i64>,
    /// Events to send before taking from the queue (`subscribed`, `gap`).
    pending: Vec<Event>,
    done: bool,
    /// When the token runs out; the stream ends then (the client reconnects with a new one).
    expires: Option<tokio::time::Instant>,
    /// Why the stream ended, once it sent its `close` event.
    ended: Option<Ended>,
    /// Why the listener cut the connection, if it did.
    cut: Option<CutReason>,
    _guard: ConnGuard,
}

impl SseState {
    /// Ends the stream with a last `close` event.
    fn close(&mut self, ended: Ended, bye: &'static str) -> Event {
        self.done = true;
        self.ended = Some(ended);
        Event::default().event("close").data(bye)
    }
}

impl Drop for SseState {
    fn drop(&mut self) {
        if let Some(active) = self.active.take() {
            subscribe::stop(&self.services, active);
        }
        self.cancel.cancel();
        self.queue.close();
        let metrics = &self.services.metrics;
        metrics.ws_connections.dec();
        // Not ended by the stream itself nor cut by the listener: the client went away.
        let reason = match (self.ended, self.cut.as_ref().and_then(CutReason::get)) {
            (Some(ended), _) => ended.label(),
            (None, Some(cut)) => cut,
            (None, None) => Ended::ClientClosed.label(),
        };
        metrics.closed(reason);
    }
}

/// Serves one SSE request: an HTTP error reply for a refused subscription, else the stream.
pub async fn serve(
    services: Arc<Services>,
    query: HashMap<String, String>,
    last_event_id: Option<String>,
    shutdown: CancellationToken,
    access: Access,
    guard: ConnGuard,
    cut: Option<CutReason>,
) -> Box<dyn warp::Reply> {
    let req = match request(&query, last_event_id.as_deref()) {
        Ok(r) => r,
        Err(e) => return refusal(&services, &e),
    };
    if !access.allows(&req.topic) {
        let e = ProtocolError::new(
            Some(ID),
            ErrorCode::Forbidden,
            format!("your token does not grant topic {:?}", req.topic),
        );
        return refusal(&services, &e);
    }
    let ws = &services.config.websocket;
    let queue = ClientQueue::new(
        ws.queue_size,
        ws.queue_bytes,
        ws.slow_client,
        services.metrics.clone(),
    );
    let cancel = shutdown.child_token();
    let conn = services.next_conn_id();
    let started = match subscribe::start(&services, conn, &queue, &cancel, &req).await {
        Ok(s) => s,
        Err(e) => return refusal(&services, &e),
    };
    services.metrics.ws_connections.inc();
    let pending = started
        .frames
        .iter()
        .map(|f| Event::default().event(event_name(f)).data(f.as_str()))
        .rev()
        .collect();
    let state = SseState {
        services: services.clone(),
        queue,
        active: Some(started.active),
        cancel,
        position: started.start,
        pending,
        done: false,
        expires: access.remaining().map(|d| tokio::time::Instant::now() + d),
        ended: None,
        cut,
        _guard: guard,
    };
    let events = events(state, ws.max_records_per_frame);
    Box::new(warp::sse::reply(
        warp::sse::keep_alive()
            .interval(std::time::Duration::from_millis(ws.ping_interval_ms))
            .stream(events),
    ))
}

fn refusal(services: &Services, e: &ProtocolError) -> Box<dyn warp::Reply> {
    services.metrics.request_error(e.code.as_str());
    let status = match e.code {
        ErrorCode::UnknownTopic => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    Box::new(warp::reply::with_status(
        warp::reply::with_header(e.to_json(), "content-type", "application/json"),
        status,
    ))
}

/// The `type` of a server message, used as the SSE event name.
fn event_name(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "message".into())
}

fn events(state: SseState, max: usize) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(state, move |mut st| async move {
        if let Some(e) = st.pending.pop() {
            return Some((Ok(e), st));
        }
        if st.done {
            return None;
        }
        let next = tokio::select! {
            biased;
            _ = st.cancel.cancelled() => {
                let bye = r#"{"type":"close","code":1001,"reason":"server shutting down"}"#;
                let e = st.close(Ended::Shutdown, bye);
                return Some((Ok(e), st));
            }
            _ = subscribe::sleep_until(st.expires) => {
                let bye = r#"{"type":"close","code":4001,"reason":"token expired"}"#;
                let e = st.close(Ended::TokenExpired, bye);
                return Some((Ok(e), st));
            }
            n = st.queue.next(max) => n,
        };
        match next {
            Next::Overflowed => {
                let bye = r#"{"type":"close","code":4008,"reason":"slow consumer"}"#;
                let e = st.close(Ended::SlowConsumer, bye);
                Some((Ok(e), st))
            }
            Next::Batch { lagged, deliveries } => {
                let metrics = &st.services.metrics;
                for (_, n) in &lagged {
                    st.pending.push(
                        Event::default().event("lagged").data(
                            ServerMessage::Lagged {
                                id: ID,
                                dropped: *n,
                            }
                            .to_json(),
                        ),
                    );
                }
                let live: Vec<_> = deliveries.iter().filter(|d| d.sub.is_active()).collect();
                if !live.is_empty() {
                    for d in &live {
                        let next = st.position.entry(d.partition).or_insert(0);
                        *next = (*next).max(d.offset + 1);
                    }
                    let records: Vec<&[u8]> = live.iter().map(|d| &d.bytes[..]).collect();
                    let frame = protocol::records_frame(ID, &records);
                    metrics.ws_records_sent.inc_by(live.len() as u64);
                    metrics.ws_frames_sent.inc();
                    metrics.ws_bytes_sent.inc_by(frame.len() as u64);
                    st.pending.insert(
                        0,
                        Event::default()
                            .event("records")
                            .id(format_position(&st.position))
                            .data(frame),
                    );
                }
                // `pending` is popped from the end: lagged first, then the records.
                match st.pending.pop() {
                    Some(e) => Some((Ok(e), st)),
                    None => Some((Ok(Event::default().comment("")), st)),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_becomes_a_subscription() -> Result<(), ProtocolError> {
        let s = request(
            &q(&[
                ("topic", "orders"),
                ("filter", "value.n > 1"),
                ("fields", "value.id, value.n"),
                ("from", "earliest"),
            ]),
            None,
        )?;
        assert_eq!(s.topic, "orders");
        assert_eq!(s.filter.as_deref(), Some("value.n > 1"));
        assert_eq!(
            s.fields,
            Some(vec!["value.id".to_string(), "value.n".to_string()])
        );
        assert_eq!(s.from, StartFrom::Earliest);
        let s = request(&q(&[("topic", "t"), ("from", "1700000000000")]), None)?;
        assert_eq!(s.from, StartFrom::Timestamp(1_700_000_000_000));
        Ok(())
    }

    #[test]
    fn last_event_id_resumes_from_its_offsets() -> Result<(), ProtocolError> {
        let s = request(&q(&[("topic", "t"), ("from", "latest")]), Some("0:43,2:7"))?;
        assert_eq!(
            s.from,
            StartFrom::Offsets(BTreeMap::from([(0, 43), (2, 7)]))
        );
        assert_eq!(
            format_position(&BTreeMap::from([(0, 43), (2, 7)])),
            "0:43,2:7"
        );
        Ok(())
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(request(&q(&[]), None).is_err());
        assert!(request(&q(&[("topic", "t"), ("from", "yesterday")]), None).is_err());
        assert!(request(&q(&[("topic", "t"), ("topik", "x")]), None).is_err());
        assert!(request(&q(&[("topic", "t")]), Some("0-43")).is_err());
        assert!(request(&q(&[("topic", "t")]), Some("0:-1")).is_err());
    }
}
