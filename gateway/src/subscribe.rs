//! Subscribe: the life cycle of one subscription, shared by the WebSocket [`crate::session`]
//! and [`crate::sse`]. Input: a `subscribe` request and the connection's [`ClientQueue`];
//! output: the subscription registered in its topic's hub (with a replay reader when it starts
//! in the past) and the `subscribed` / `gap` replies, until [`stop`] ends it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::filter::{self, Shape, ShapeError};
use crate::hub::{ClientQueue, Subscription, TopicHub};
use crate::protocol::{self, ErrorCode, ProtocolError, ServerMessage, StartFrom};
use crate::services::Services;
use crate::source::{self, SourceError};

/// A subscription held by a connection.
pub struct ActiveSub {
    sub: Arc<Subscription>,
    topic: Arc<TopicHub>,
    /// Stops the subscription's replay reader, if it has one.
    replay: Option<CancellationToken>,
}

impl ActiveSub {
    /// The topic it reads.
    pub fn topic(&self) -> &Arc<str> {
        self.topic.name()
    }
}

/// A subscription that has started: registered in its topic's hub, with its replay reader
/// running if it starts in the past.
pub struct Started {
    pub active: ActiveSub,
    /// `subscribed`, then any `gap` frames.
    pub frames: Vec<String>,
    /// Per partition, the next offset the subscription starts from (the live position for
    /// `latest`).
    pub start: BTreeMap<i32, i64>,
}

/// Starts the subscription `req` for connection `conn`, feeding `queue`. Checks the topic,
/// compiles the shape, and for a start in the past plans and spawns the replay reader (stopped
/// by `cancel` or by ending the subscription).
pub async fn start(
    services: &Arc<Services>,
    conn: u64,
    queue: &Arc<ClientQueue>,
    cancel: &CancellationToken,
    req: &protocol::Subscribe,
) -> Result<Started, ProtocolError> {
    let id = req.id.as_str();
    let err = |code, message: String| ProtocolError::new(Some(id), code, message);
    let Some(topic) = services.hub.topic(&req.topic).cloned() else {
        return Err(err(
            ErrorCode::UnknownTopic,
            format!("topic {:?} is not served by this gateway", req.topic),
        ));
    };
    // Compiled off the runtime threads: parsing recurses per nesting level and the trial
    // evaluation runs the filter once.
    let limits = (&services.config.websocket).into();
    let shape = match &req.filter {
        Some(_) => {
            filter::compile_shape(
                req.filter.clone(),
                req.fields.clone(),
                topic.env().clone(),
                limits,
            )
            .await
        }
        // Nothing to parse or evaluate: built here.
        None => Shape::new(None, req.fields.as_deref(), topic.env(), &limits),
    }
    .map_err(|e| match e {
        ShapeError::BadFilter(m) => err(ErrorCode::BadFilter, m),
        ShapeError::BadFields(m) => err(ErrorCode::BadRequest, m),
    })?;
    let timeout = Duration::from_millis(services.config.kafka.request_timeout_ms);
    let live = req.from == StartFrom::Latest;
    let sub = Subscription::new(conn, Arc::from(id), queue.clone(), Arc::new(shape), live);
    let (partitions, start, replay, gaps) = if live {
        let partitions = topic.wait_assigned(timeout).await.unwrap_or_default();
        topic
            .add(sub.clone())
            .map_err(|e| err(ErrorCode::TooManySubscriptions, e.to_string()))?;
        (partitions, topic.published_next(), None, Vec::new())
    } else {
        let slot = services
            .admit_replay(conn)
            .map_err(|m| err(ErrorCode::TooManySubscriptions, m))?;
        let plan = replay_plan(services, &req.topic, &req.from)
            .await
            .map_err(|e| match e {
                SourceError::NoSuchTopic(_) => err(ErrorCode::UnknownTopic, e.to_string()),
                other => err(
                    ErrorCode::BadRequest,
                    format!("cannot start the subscription: {other}"),
                ),
            })?;
        let Some(decoder) = services.decoders.get(req.topic.as_str()).cloned() else {
            return Err(err(ErrorCode::UnknownTopic, "no decoder for topic".into()));
        };
        let reader = source::open_replay(&services.kafka, &req.topic).map_err(|e| {
            err(
                ErrorCode::BadRequest,
                format!("cannot start the subscription: {e}"),
            )
        })?;
        // In the hub first (not yet live), so the replay reader can hand partitions over.
        topic
            .add(sub.clone())
            .map_err(|e| err(ErrorCode::TooManySubscriptions, e.to_string()))?;
        let plan = plan.fitted(&services.followers.follow(&topic, &sub));
        let token = cancel.child_token();
        tokio::spawn({
            let kafka = services.kafka.clone();
            let topic = topic.clone();
            let sub = sub.clone();
            let token = token.clone();
            let start = plan.start.clone();
            async move {
                if let Err(e) =
                    source::run_replay(kafka, reader, decoder, topic, sub, start, token).await
                {
                    tracing::warn!(error = %e, "replay reader failed");
                }
                // The place is freed once the reader has caught up (or stopped).
                drop(slot);
            }
        });
        (plan.partitions, plan.start, Some(token), plan.gaps)
    };
    let mut frames = vec![
        ServerMessage::Subscribed {
            id,
            topic: &req.topic,
            partitions: &partitions,
            start: &start,
        }
        .to_json(),
    ];
    frames.extend(gaps.iter().map(|g| {
        ServerMessage::Gap {
            id,
            partition: g.partition,
            requested: g.requested,
            first_available: g.first_available,
        }
        .to_json()
    }));
    services.metrics.ws_subscriptions.inc();
    Ok(Started {
        active: ActiveSub { sub, topic, replay },
        frames,
        start,
    })
}

/// Ends a subscription: no more deliveries, replay reader stopped.
pub fn stop(services: &Services, active: ActiveSub) {
    active.sub.deactivate();
    active.topic.remove(&active.sub);
    if let Some(t) = active.replay {
        t.cancel();
    }
    services.metrics.ws_subscriptions.dec();
}

/// Where a replay starts in each partition, and the gaps a resume cannot fill.
async fn replay_plan(
    services: &Services,
    topic: &str,
    from: &StartFrom,
) -> Result<ReplayPlan, SourceError> {
    let kafka = &services.kafka;
    let partitions = kafka.partitions(topic).await?;
    let marks = kafka.watermarks(topic, &partitions).await?;
    let mut gaps = Vec::new();
    let start: BTreeMap<i32, i64> = match from {
        StartFrom::Latest | StartFrom::Earliest => {
            marks.iter().map(|(&p, &(low, _))| (p, low)).collect()
        }
        StartFrom::Timestamp(ms) => kafka.offsets_for_time(topic, &partitions, *ms).await?,
        StartFrom::Offsets(wanted) => marks
            .iter()
            .map(|(&p, &(low, high))| {
                // A partition the client did not name starts at the beginning: a resuming
                // client that had seen nothing of it must not lose what it holds.
                let requested = wanted.get(&p).copied().unwrap_or(low);
                let offset = if requested < low {
                    gaps.push(Gap {
                        partition: p,
                        requested,
                        first_available: low,
                    });
                    low
                } else {
                    requested.min(high)
                };
                (p, offset)
            })
            .collect(),
    };
    Ok(ReplayPlan {
        partitions,
        start,
        gaps,
    })
}

struct Gap {
    partition: i32,
    requested: i64,
    first_available: i64,
}

struct ReplayPlan {
    partitions: Vec<i32>,
    start: BTreeMap<i32, i64>,
    gaps: Vec<Gap>,
}

impl ReplayPlan {
    /// The plan for the partitions the live consumer reads (`live`, as
    /// [`source::Followers::follow`] returned it), so that each partition reaches the
    /// subscription one way only: a partition the cluster listed but the live consumer does not
    /// read yet is handed over by it once it does (from its start), and one it reads that the
    /// cluster's answer missed is replayed from its earliest offset. Before the live consumer
    /// is assigned, the plan stays as it is.
    fn fitted(mut self, live: &BTreeMap<i32, i64>) -> Self {
        if live.is_empty() {
            return self;
        }
        self.start.retain(|p, _| live.contains_key(p));
        for &p in live.keys() {
            self.start.entry(p).or_insert(0);
        }
        self.gaps.retain(|g| live.contains_key(&g.partition));
        self.partitions = self.start.keys().copied().collect();
        self
    }
}

/// Resolves at `at`, or never.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
