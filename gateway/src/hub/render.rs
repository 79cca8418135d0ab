//! Rendering a batch for the hub: which shapes each record may match ([`TopicHub`]'s plan, from
//! the filter index), each record rendered once per shape, with its CEL context and whole JSON
//! shared ([`Renderer`]), on the calling thread or the blocking pool by the plan's cost. Takes
//! the topic's read lock to plan, and no lock to render.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use cel::Env;

use super::{Delivery, Subscription, TopicHub};
use crate::filter::Shape;
use crate::record::Record;

/// A batch whose candidate filters may take more steps than this in all is rendered on the
/// blocking pool, off the runtime threads: a costly filter slows its own topic, not `/healthz`
/// or other sessions. So is a replayed record whose filter may. Steps are the interpreter's
/// ([`Shape::steps`]: a compiled filter's weighed at what it costs); one is well under a
/// microsecond, so this is about a millisecond.
pub(super) const INLINE_STEPS: u64 = 20_000;

/// A batch rendered: per group (by id), the records it sends (bytes, partition, offset), in
/// order.
pub(super) type Rendered = Vec<(u64, Vec<(Bytes, i32, i64)>)>;

/// What a batch is rendered for: the groups the index found as candidates for its records,
/// and per record which of them (the others do not match it).
pub(super) struct Plan {
    pub(super) groups: Vec<(u64, Arc<Shape>)>,
    /// Per record, indices into `groups`.
    pub(super) per_record: Vec<Vec<u32>>,
    /// The most evaluation steps rendering takes in all.
    pub(super) steps: u64,
    /// Groups with an id from this one were not on the topic when the plan was made.
    pub(super) covers_below: u64,
}

impl Plan {
    /// Every group of `groups` for every one of `records` records (groups subscribed after a
    /// plan was made: their filters decide alone).
    pub(super) fn all(groups: Vec<(u64, Arc<Shape>)>, records: usize, covers_below: u64) -> Self {
        let steps = groups
            .iter()
            .fold(0u64, |acc, (_, shape)| acc.saturating_add(shape.steps()))
            .saturating_mul(records as u64);
        let every: Vec<u32> = (0..groups.len() as u32).collect();
        Plan {
            groups,
            per_record: vec![every; records],
            steps,
            covers_below,
        }
    }
}

/// Renders a record for each shape, once, sharing the CEL context and the whole-record JSON.
pub struct Renderer<'r> {
    record: &'r Record,
    env: &'r Arc<Env>,
    ctx: Option<cel::Context<'r, 'r>>,
    whole: Option<Bytes>,
}

impl<'r> Renderer<'r> {
    /// A renderer for `record`.
    pub fn new(record: &'r Record, env: &'r Arc<Env>) -> Self {
        Self {
            record,
            env,
            ctx: None,
            whole: None,
        }
    }

    /// The record as `shape` sends it; `Err` when its filter failed on this record.
    pub fn render(&mut self, shape: &Shape) -> Result<Option<Bytes>, String> {
        shape.render(self.record, self.env, &mut self.ctx, &mut self.whole)
    }
}

impl TopicHub {
    /// Renders `records` as `plan` says: on this thread when its steps are within
    /// [`INLINE_STEPS`], else on the blocking pool.
    pub(super) async fn render_budgeted(
        self: &Arc<Self>,
        plan: Plan,
        records: &Arc<Vec<Arc<Record>>>,
    ) -> Option<Rendered> {
        if plan.steps <= INLINE_STEPS {
            return Some(self.render(&plan, records));
        }
        self.render_off_runtime(plan, records.clone()).await
    }

    /// Renders `records` as `plan` says on the blocking pool; `None` if that failed (only a
    /// panic in a filter: its records are counted as filter errors).
    pub(super) async fn render_off_runtime(
        self: &Arc<Self>,
        plan: Plan,
        records: Arc<Vec<Arc<Record>>>,
    ) -> Option<Rendered> {
        let hub = self.clone();
        match tokio::task::spawn_blocking(move || hub.render(&plan, &records)).await {
            Ok(rendered) => Some(rendered),
            Err(e) => {
                self.filter_errors.inc();
                tracing::error!(topic = %self.name, error = %e, "rendering a batch failed");
                None
            }
        }
    }

    /// Finds, under the read lock, the groups each record may match.
    pub(super) fn plan(&self, records: &[Arc<Record>]) -> Plan {
        let st = self.read();
        let mut plan = Plan {
            groups: Vec::new(),
            per_record: Vec::with_capacity(records.len()),
            steps: 0,
            covers_below: st.next_id,
        };
        if st.groups.is_empty() {
            return plan;
        }
        let mut slots: HashMap<u64, u32> = HashMap::new();
        let mut ids = Vec::new();
        for record in records {
            ids.clear();
            st.index.candidates(record, &mut ids);
            let mut mine = Vec::with_capacity(ids.len());
            for id in &ids {
                let Some(group) = st.groups.get(id) else {
                    continue;
                };
                plan.steps = plan.steps.saturating_add(group.shape.steps());
                let slot = *slots.entry(*id).or_insert_with(|| {
                    plan.groups.push((*id, group.shape.clone()));
                    (plan.groups.len() - 1) as u32
                });
                mine.push(slot);
            }
            plan.per_record.push(mine);
        }
        plan
    }

    /// Renders `records` as `plan` says, sharing each record's CEL context and whole JSON
    /// between shapes. Takes no lock.
    pub(super) fn render(&self, plan: &Plan, records: &[Arc<Record>]) -> Rendered {
        let mut out: Rendered = plan
            .groups
            .iter()
            .map(|(id, _)| (*id, Vec::new()))
            .collect();
        for (record, slots) in records.iter().zip(&plan.per_record) {
            if slots.is_empty() {
                continue;
            }
            let mut renderer = Renderer::new(record, &self.env);
            for &slot in slots {
                let (_, shape) = &plan.groups[slot as usize];
                match renderer.render(shape) {
                    Ok(Some(b)) => out[slot as usize]
                        .1
                        .push((b, record.partition, record.offset)),
                    Ok(None) => {}
                    Err(e) => self.filter_failed(&shape.key, &e),
                }
            }
        }
        out.retain(|(_, r)| !r.is_empty());
        out
    }

    pub(super) fn render_shape(
        &self,
        shape: &Shape,
        records: &[Arc<Record>],
        renderers: &mut [Renderer<'_>],
    ) -> Vec<(Bytes, i32, i64)> {
        let mut out = Vec::new();
        for (record, renderer) in records.iter().zip(renderers) {
            match renderer.render(shape) {
                Ok(Some(b)) => out.push((b, record.partition, record.offset)),
                Ok(None) => {}
                Err(e) => self.filter_failed(&shape.key, &e),
            }
        }
        out
    }

    /// Hands `record`, read by `sub`'s own replay reader, to `sub` as its shape sends it,
    /// waiting for room in its queue (a replay goes at the client's pace instead of dropping).
    /// A shape whose filter may take over [`INLINE_STEPS`] on it is rendered on the blocking
    /// pool, as a costly live batch is. False once the queue is closed: the reader should stop.
    pub async fn deliver_replayed(&self, sub: &Arc<Subscription>, record: &Arc<Record>) -> bool {
        // Rendered before waiting: the renderer's CEL context stays on the rendering thread.
        let rendered = if sub.shape.steps() <= INLINE_STEPS {
            Renderer::new(record, &self.env).render(&sub.shape)
        } else {
            let (env, shape, record) = (self.env.clone(), sub.shape.clone(), record.clone());
            tokio::task::spawn_blocking(move || Renderer::new(&record, &env).render(&shape))
                .await
                .unwrap_or_else(|e| Err(format!("rendering failed: {e}")))
        };
        match rendered {
            Ok(Some(bytes)) => {
                sub.queue
                    .push_waiting(Delivery {
                        sub: sub.clone(),
                        bytes,
                        partition: record.partition,
                        offset: record.offset,
                        chunk: None,
                        timestamp: None,
                    })
                    .await
            }
            Ok(None) => true,
            Err(e) => {
                self.filter_failed(&sub.shape.key, &e);
                true
            }
        }
    }
}
