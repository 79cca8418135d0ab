//! `cargo bench -p lakewire --bench hub`: the hub's whole path for a batch of 64 records, on one
//! core: each record made from its JSON text (so parsed afresh, as the source hands it over),
//! the topic's filter index, rendering once per shape, and the hand-over to every matching
//! subscription's queue ([`TopicHub::publish_batch`]); the queues are drained after each batch,
//! as sessions do. 1,000 subscriptions, each its own shape, in three sets:
//!
//! - `selective`: `value.device == 'dN'`, N = 0..999; each record matches one;
//! - `tombstones`: the same filters, every other record a tombstone (value `null`): the index
//!   must rule every filter out for those (no evaluation, no error counted);
//! - `fallback`: 900 of those and 100 filters only the CEL interpreter runs, with no indexed
//!   conjunct (`value.items.map(i, i.qty).exists(q, q > K)`): every record builds its CEL
//!   context and runs the 100.
//!
//! Baseline, in the same process on the same records: what a gateway without compiled filters,
//! an index or shared rendering does — for each record, its CEL context once, then every
//! subscription's filter on the interpreter and, on a match, the record's frame written for
//! that subscription. Before timing, both paths are checked to deliver the same records.

#[path = "common/compare.rs"]
#[allow(dead_code)] // `rate` only
mod compare;

use std::sync::Arc;

use bytes::Bytes;
use cel::Env;
use lakewire::config::SlowClientPolicy;
use lakewire::filter::{Limits, Shape, context, env};
use lakewire::hub::{ClientQueue, Next, ShapeLimits, Subscription, TopicHub};
use lakewire::metrics::Metrics;
use lakewire::record::Record;

const LIMITS: Limits = Limits {
    max_filter_bytes: 4096,
    max_filter_nodes: 200,
    max_fields: 16,
};
const BATCH: usize = 64;
const SUBS: usize = 1_000;
const SECS: f64 = 3.0;

struct Set {
    name: &'static str,
    hub: Arc<TopicHub>,
    queues: Vec<Arc<ClientQueue>>,
    shapes: Vec<Arc<Shape>>,
    /// The batch's values (`None`: a tombstone).
    values: Vec<Option<Bytes>>,
}

fn shape(env: &Arc<Env>, filter: &str) -> Arc<Shape> {
    Arc::new(
        Shape::new(Some(filter), None, env, &LIMITS).unwrap_or_else(|e| panic!("{filter}: {e:?}")),
    )
}

fn set(name: &'static str, env: &Arc<Env>, filters: Vec<String>, tombstones: bool) -> Set {
    let m = Metrics::default();
    let hub = TopicHub::new("orders", env.clone(), m.clone(), ShapeLimits::topic(SUBS));
    let mut queues = Vec::new();
    let mut shapes = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let q = ClientQueue::new(1 << 16, 1 << 30, SlowClientPolicy::Drop, m.clone());
        let s = shape(env, f);
        let sub = Subscription::new(i as u64, format!("s{i}").into(), q.clone(), s.clone(), true);
        hub.add(sub).unwrap_or_else(|e| panic!("{e}"));
        queues.push(q);
        shapes.push(s);
    }
    hub.set_assigned(Some([(0, 0)].into()));
    let values = (0..BATCH)
        .map(|i| {
            (!(tombstones && i % 2 == 1)).then(|| {
                Bytes::from(format!(
                    r#"{{"id":{i},"device":"d{}","region":"eu-{}","amount":{}.5,"items":[{{"sku":"A-{i}","qty":{}}},{{"sku":"B","qty":1}}],"status":"paid"}}"#,
                    (i * 37) % SUBS,
                    i % 7,
                    i * 13,
                    i % 40
                ))
            })
        })
        .collect();
    Set {
        name,
        hub,
        queues,
        shapes,
        values,
    }
}

fn records(values: &[Option<Bytes>], first_offset: i64) -> Vec<Arc<Record>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Arc::new(Record::new(
                Arc::from("orders"),
                0,
                first_offset + i as i64,
                Some(1_732_690_000_000),
                Some(format!("k{i}")),
                v.clone().unwrap_or_else(|| Bytes::from_static(b"null")),
            ))
        })
        .collect()
}

/// Takes everything queued: what each queue held, in order (subscription, offset).
fn drain(rt: &tokio::runtime::Runtime, queues: &[Arc<ClientQueue>]) -> Vec<(usize, i64)> {
    let mut got = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        if q.is_empty() {
            continue;
        }
        if let Next::Batch { deliveries, .. } = rt.block_on(q.next(usize::MAX)) {
            got.extend(deliveries.iter().map(|d| (i, d.offset)));
        }
    }
    got
}

/// The baseline: every subscription's filter on the interpreter, a frame per match.
fn naive(env: &Arc<Env>, shapes: &[Arc<Shape>], records: &[Arc<Record>]) -> Vec<(usize, i64)> {
    let mut got = Vec::new();
    for r in records {
        let ctx = context(env, r);
        for (i, s) in shapes.iter().enumerate() {
            let Some(f) = &s.filter else { continue };
            if f.matches(&ctx) == Ok(true) {
                let mut out = Vec::with_capacity(96 + r.value_json.len());
                lakewire::protocol::write_record(r, &mut out);
                std::hint::black_box(Bytes::from(out));
                got.push((i, r.offset));
            }
        }
    }
    got
}

fn main() {
    let env = env();
    let device = |n: usize| (0..n).map(|d| format!("value.device == 'd{d}'"));
    let sets = [
        set("selective", &env, device(SUBS).collect(), false),
        set("tombstones", &env, device(SUBS).collect(), true),
        set(
            "fallback",
            &env,
            device(SUBS - 100)
                .chain((0..100).map(|k| format!("value.items.map(i, i.qty).exists(q, q > {k})")))
                .collect(),
            false,
        ),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    println!("the hub's path for a batch of {BATCH} records, {SUBS} subscriptions, one core:");
    for s in &sets {
        // Same deliveries on both paths.
        let batch = records(&s.values, 0);
        s.hub.publish_batch(&batch);
        let mut ours = drain(&rt, &s.queues);
        let mut base = naive(&env, &s.shapes, &records(&s.values, 0));
        ours.sort_unstable();
        base.sort_unstable();
        assert_eq!(
            ours, base,
            "{}: the hub delivers what the baseline does",
            s.name
        );
        let unindexed = s.hub.unindexed_count();
        let mut offset = BATCH as i64;
        let hub_rate = compare::rate(BATCH, SECS, || {
            let batch = records(&s.values, offset);
            offset += BATCH as i64;
            s.hub.publish_batch(&batch);
            drain(&rt, &s.queues).len()
        });
        let base_rate = compare::rate(BATCH, SECS, || {
            naive(&env, &s.shapes, &records(&s.values, 0)).len()
        });
        println!(
            "  {:<10} ({} deliveries a batch, {unindexed} shapes unindexed): hub {:>9.0} records/s ({:>6.2} µs a record), baseline {:>9.0} records/s ({:>7.2} µs); hub / baseline {:.1}x",
            s.name,
            ours.len(),
            hub_rate,
            1e6 / hub_rate,
            base_rate,
            1e6 / base_rate,
            hub_rate / base_rate
        );
    }
}
