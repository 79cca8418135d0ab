//! The producer: a thread that writes JSON records to Kafka at the rate it is told, each value
//! carrying its produce time (µs since the epoch) under [`crate::scan::STAMP_KEY`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};

use crate::now_us;

/// How the fields the filters read vary from record to record, for a number of clients: the
/// field `b` takes `buckets` values and each selective filter matches `width` of them (about
/// 1%: 10 of 1,010 up to 1,000 clients, as in the first runs; 100 of 10,100 for 10,000, so
/// that every client's filter is distinct); `device` takes `devices` values (`d0`, `d1`, ...),
/// one per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    pub buckets: u64,
    pub width: u64,
    pub devices: u64,
}

impl Spread {
    pub fn for_clients(clients: usize) -> Self {
        let c = clients.max(1) as u64;
        let width = 10 * (c / 1000).max(1);
        Spread {
            buckets: (100 * width).max(c) + width,
            width,
            devices: c,
        }
    }
}

/// Counts failed deliveries.
struct Ctx {
    failed: Arc<AtomicU64>,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the controller and the producer thread share.
#[derive(Debug, Default)]
pub struct Control {
    /// Records per second to produce now (0: pause).
    pub rate: AtomicU64,
    /// Measurement window, µs since the epoch: records stamped inside it are counted.
    pub window_start: AtomicU64,
    pub window_end: AtomicU64,
    /// Records produced with a stamp inside the window.
    pub produced_in_window: AtomicU64,
    /// Records produced in all.
    pub produced: AtomicU64,
    /// Records librdkafka could not deliver.
    pub failed: Arc<AtomicU64>,
    /// Times the producer fell behind its schedule by more than 50 ms (it then skips ahead).
    pub behind: AtomicU64,
    pub stop: AtomicBool,
    /// Which of the producer's [`Sink`]s records go to now (index): each server under test
    /// reads its own topic, and only the one being measured gets records.
    pub target: AtomicUsize,
    /// Add the `centrifugo-tag-b` header (Centrifugo's tags filter reads it; the selective
    /// scenario), so that other runs do not carry the tag in every publication.
    pub tag_bucket: AtomicBool,
    /// Add the `centrifugo-tag-device` header (the device scenario).
    pub tag_device: AtomicBool,
    /// The [`Spread`] of the records produced now: `buckets` and `devices` (0: the default
    /// for 1,000 clients).
    pub buckets: AtomicU64,
    pub devices: AtomicU64,
}

impl Control {
    /// Counts records stamped from now on (until [`Control::close_window`]).
    pub fn open_window(&self) -> u64 {
        let now = now_us();
        self.window_end.store(u64::MAX, Ordering::SeqCst);
        self.produced_in_window.store(0, Ordering::SeqCst);
        self.window_start.store(now, Ordering::SeqCst);
        now
    }

    /// Ends the window now; returns its end.
    pub fn close_window(&self) -> u64 {
        let now = now_us();
        self.window_end.store(now, Ordering::SeqCst);
        now
    }

    /// Records from now on vary as `spread` says.
    pub fn set_spread(&self, spread: Spread) {
        self.buckets.store(spread.buckets, Ordering::SeqCst);
        self.devices.store(spread.devices, Ordering::SeqCst);
    }

    fn spread(&self) -> Spread {
        let default = Spread::for_clients(1000);
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        Spread {
            buckets: or(self.buckets.load(Ordering::Relaxed), default.buckets),
            width: 0,
            devices: or(self.devices.load(Ordering::Relaxed), default.devices),
        }
    }

    /// Whether a record stamped `t` is in the window.
    pub fn in_window(&self, t: u64) -> bool {
        t >= self.window_start.load(Ordering::Relaxed)
            && t < self.window_end.load(Ordering::Relaxed)
    }
}

/// The bucket (field `b`) of record number `n`.
pub fn bucket(n: u64, spread: Spread) -> u64 {
    n.wrapping_mul(7919) % spread.buckets.max(1)
}

/// The device number (field `device` is `d` and it) of record number `n`.
pub fn device(n: u64, spread: Spread) -> u64 {
    n.wrapping_mul(104_729) % spread.devices.max(1)
}

/// Where the producer writes: a topic, and for Centrifugo's Kafka consumer in publication data
/// mode the channel header (the value is the same JSON either way).
#[derive(Debug, Clone)]
pub struct Sink {
    pub topic: String,
    /// `centrifugo-channels` header value, when the topic is read by Centrifugo.
    pub centrifugo_channel: Option<String>,
}

/// Writes one record's value:
/// `{"lw_t":<µs>,"n":<seq>,"b":<bucket>,"device":"d<i>",...,"pad":"..."}`, padded to about
/// `size` bytes.
pub fn value(out: &mut String, t: u64, n: u64, size: usize, spread: Spread) {
    out.clear();
    let b = bucket(n, spread);
    let d = device(n, spread);
    let region = if n.is_multiple_of(2) { "eu" } else { "us" };
    let _ = write!(
        out,
        r#"{{"lw_t":{t},"n":{n},"b":{b},"device":"d{d}","region":"{region}","amount":{}.5,"pad":""#,
        n % 1000
    );
    while out.len() + 2 < size {
        out.push('x');
    }
    out.push_str("\"}");
}

/// Starts the producer thread for `sinks` on `brokers` (records go to `sinks[control.target]`).
pub fn start(
    brokers: &str,
    sinks: Vec<Sink>,
    record_bytes: usize,
    control: Arc<Control>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let producer: BaseProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "1")
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Ctx {
            failed: control.failed.clone(),
        })
        .context("creating the Kafka producer")?;
    std::thread::Builder::new()
        .name("wsload-producer".into())
        .spawn(move || run(&producer, &sinks, record_bytes, &control))
        .context("starting the producer thread")
}

/// Produces `n` records to `sink` as fast as the producer goes, and waits until the broker has
/// them all (the decode scenario).
pub fn burst(brokers: &str, sink: &Sink, n: u64, record_bytes: usize) -> anyhow::Result<()> {
    let failed = Arc::new(AtomicU64::new(0));
    let producer: BaseProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "1")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Ctx {
            failed: failed.clone(),
        })
        .context("creating the Kafka producer")?;
    let mut buf = String::with_capacity(record_bytes + 64);
    let mut seq = 0;
    while seq < n {
        value(
            &mut buf,
            now_us(),
            seq,
            record_bytes,
            Spread::for_clients(1000),
        );
        let mut rec = BaseRecord::<(), str>::to(&sink.topic).payload(buf.as_str());
        if let Some(channel) = &sink.centrifugo_channel {
            rec = rec.headers(OwnedHeaders::new().insert(Header {
                key: "centrifugo-channels",
                value: Some(channel.as_bytes()),
            }));
        }
        match producer.send(rec) {
            Ok(()) => seq += 1,
            Err((KafkaError::MessageProduction(_), _)) => {
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e).context("producing"),
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        anyhow::bail!("{failed} of {n} records were not delivered to the broker");
    }
    Ok(())
}

fn run(
    producer: &BaseProducer<Ctx>,
    sinks: &[Sink],
    record_bytes: usize,
    control: &Control,
) -> anyhow::Result<()> {
    let tick = Duration::from_millis(1);
    let mut buf = String::with_capacity(record_bytes + 64);
    let mut seq: u64 = 0;
    // The schedule: `sent` records since `since`, at `rate`.
    let mut rate = 0;
    let mut since = Instant::now();
    let mut sent: u64 = 0;
    while !control.stop.load(Ordering::Relaxed) {
        let r = control.rate.load(Ordering::Relaxed);
        if r != rate {
            rate = r;
            since = Instant::now();
            sent = 0;
        }
        if rate > 0 {
            let due = (since.elapsed().as_secs_f64() * rate as f64) as u64;
            if due > sent + rate / 20 + 1 {
                // More than 50 ms behind: do not burst to catch up, note it.
                control.behind.fetch_add(1, Ordering::Relaxed);
                sent = due.saturating_sub(1);
            }
            while sent < due {
                let t = now_us();
                let spread = control.spread();
                value(&mut buf, t, seq, record_bytes, spread);
                let sink = sinks
                    .get(control.target.load(Ordering::Relaxed))
                    .or(sinks.first())
                    .context("no topic to produce to")?;
                let mut rec = BaseRecord::<(), str>::to(&sink.topic).payload(buf.as_str());
                if let Some(channel) = &sink.centrifugo_channel {
                    let mut h = OwnedHeaders::new().insert(Header {
                        key: "centrifugo-channels",
                        value: Some(channel.as_bytes()),
                    });
                    if control.tag_bucket.load(Ordering::Relaxed) {
                        let b = bucket(seq, spread).to_string();
                        h = h.insert(Header {
                            key: "centrifugo-tag-b",
                            value: Some(b.as_bytes()),
                        });
                    }
                    if control.tag_device.load(Ordering::Relaxed) {
                        let d = format!("d{}", device(seq, spread));
                        h = h.insert(Header {
                            key: "centrifugo-tag-device",
                            value: Some(d.as_bytes()),
                        });
                    }
                    rec = rec.headers(h);
                }
                match producer.send(rec) {
                    Ok(()) => {
                        sent += 1;
                        seq += 1;
                        control.produced.fetch_add(1, Ordering::Relaxed);
                        if control.in_window(t) {
                            control.produced_in_window.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err((KafkaError::MessageProduction(_), _)) => {
                        // Queue full: let librdkafka send, then retry.
                        producer.poll(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(e).context("producing"),
                }
            }
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(tick);
    }
    producer
        .flush(Duration::from_secs(10))
        .context("flushing the producer")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_keeps_filters_distinct_and_about_one_percent() {
        assert_eq!(
            Spread::for_clients(1000),
            Spread {
                buckets: 1010,
                width: 10,
                devices: 1000
            }
        );
        let big = Spread::for_clients(10_000);
        assert_eq!((big.buckets, big.width, big.devices), (10_100, 100, 10_000));
        assert_eq!(Spread::for_clients(10).buckets, 1010);
        // Every bucket is reached.
        let mut seen = vec![false; 10_100];
        for n in 0..200_000 {
            seen[bucket(n, big) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn values_are_json_of_about_the_size_asked() -> anyhow::Result<()> {
        let mut s = String::new();
        let spread = Spread::for_clients(1000);
        value(&mut s, 1_732_690_000_000_123, 42, 200, spread);
        assert_eq!(s.len(), 200);
        let v: serde_json::Value = serde_json::from_str(&s)?;
        assert_eq!(v["lw_t"], 1_732_690_000_000_123u64);
        assert_eq!(v["n"], 42);
        assert!(v["b"].as_u64().is_some_and(|b| b < 1010));
        assert_eq!(v["device"], format!("d{}", 42 * 104_729 % 1000));
        // Smaller than the fixed fields: no padding, still JSON.
        value(&mut s, 1, 1, 10, spread);
        serde_json::from_str::<serde_json::Value>(&s)?;
        Ok(())
    }

    #[test]
    fn window_counts_only_what_is_inside() {
        let c = Control::default();
        let start = c.open_window();
        assert!(c.in_window(start));
        assert!(!c.in_window(start - 1));
        let end = c.close_window();
        assert!(!c.in_window(end));
    }
}
