//! The servers under test of one `wsload` invocation (Lakewire spawned or given, Centrifugo),
//! their topics and the producer that feeds them: set up once, run per scenario point, torn
//! down at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use lakewire_wsload::gateway::{self, Spawned};
use lakewire_wsload::load::{self, FilterMode, Outcome, Point, Protocol, Watched};
use lakewire_wsload::{procstat, produce};

use crate::summary::{banner, ratio, summary_of};
use crate::{Common, SweepArgs};

/// One server under test.
pub(crate) struct Target {
    pub(crate) protocol: Protocol,
    pub(crate) addr: SocketAddr,
    /// The topic (Lakewire) or channel (Centrifugo) clients subscribe to.
    pub(crate) subscribe_to: String,
    pub(crate) pid: Option<u32>,
    /// Index of its topic in the producer's sinks.
    pub(crate) sink: usize,
    pub(crate) _spawned: Option<Spawned>,
}

/// The servers, their topics and the producer of a whole invocation.
pub(crate) struct Setup {
    pub(crate) targets: Vec<Target>,
    pub(crate) broker: Option<u32>,
    pub(crate) control: Arc<produce::Control>,
    pub(crate) producer: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    pub(crate) sinks: Vec<produce::Sink>,
}

impl Setup {
    pub(crate) async fn new(c: &Common) -> anyhow::Result<Self> {
        if !(0.0..1.0).contains(&c.stalled) {
            bail!("--stalled must be in 0..1");
        }
        let mut targets = Vec::new();
        let mut sinks = Vec::new();
        match (&c.spawn_gateway, c.gateway) {
            (Some(bin), _) => {
                let topic = gateway::unique_topic();
                gateway::create_topic(&c.brokers, &topic, c.partitions).await?;
                let gw = Spawned::start(
                    bin,
                    &c.brokers,
                    &topic,
                    c.queue_size,
                    &c.gateway_kafka_properties,
                )
                .await?;
                eprintln!(
                    "wsload: started {} (pid {}) on {}, topic {topic}; log {}",
                    bin.display(),
                    gw.pid(),
                    gw.addr,
                    gw.log_path().display()
                );
                sinks.push(produce::Sink {
                    topic: topic.clone(),
                    centrifugo_channel: None,
                });
                targets.push(Target {
                    protocol: Protocol::Lakewire,
                    addr: gw.addr,
                    subscribe_to: topic.clone(),
                    pid: Some(gw.pid()),
                    sink: 0,
                    _spawned: Some(gw),
                });
                if let Some(cbin) = &c.centrifugo {
                    let ctopic = format!("{topic}-centrifugo");
                    gateway::create_topic(&c.brokers, &ctopic, c.partitions).await?;
                    let cf =
                        Spawned::start_centrifugo(cbin, &c.brokers, &ctopic, c.deflate).await?;
                    eprintln!(
                        "wsload: started {} (pid {}) on {}, topic {ctopic}; log {}",
                        cbin.display(),
                        cf.pid(),
                        cf.addr,
                        cf.log_path().display()
                    );
                    sinks.push(produce::Sink {
                        topic: ctopic,
                        centrifugo_channel: Some(gateway::CENTRIFUGO_CHANNEL.into()),
                    });
                    targets.push(Target {
                        protocol: Protocol::Centrifugo,
                        addr: cf.addr,
                        subscribe_to: gateway::CENTRIFUGO_CHANNEL.into(),
                        pid: Some(cf.pid()),
                        sink: 1,
                        _spawned: Some(cf),
                    });
                }
            }
            (None, Some(addr)) => {
                let topic = c.topic.clone().context("--gateway needs --topic")?;
                let pid = c
                    .gateway_pid
                    .or_else(|| match procstat::find_by_name("lakewire")[..] {
                        [pid] => Some(pid),
                        _ => None,
                    });
                if pid.is_none() {
                    eprintln!(
                        "wsload: gateway pid unknown (give --gateway-pid): no CPU/RSS figures"
                    );
                }
                sinks.push(produce::Sink {
                    topic: topic.clone(),
                    centrifugo_channel: None,
                });
                targets.push(Target {
                    protocol: Protocol::Lakewire,
                    addr,
                    subscribe_to: topic,
                    pid,
                    sink: 0,
                    _spawned: None,
                });
            }
            (None, None) => bail!("give --spawn-gateway PATH or --gateway ADDR --topic NAME"),
        }
        let control = Arc::new(produce::Control::default());
        let producer = produce::start(&c.brokers, sinks.clone(), c.record_bytes, control.clone())?;
        Ok(Self {
            targets,
            broker: c.broker_pid,
            control,
            producer: Some(producer),
            sinks,
        })
    }

    pub(crate) fn point(&self, c: &Common, t: &Target, rate: u64, stalled: f64) -> Point {
        Point {
            protocol: t.protocol,
            addr: t.addr,
            topic: t.subscribe_to.clone(),
            clients: c.clients,
            stalled,
            filter: c.filter,
            rate,
            warmup: Duration::from_secs_f64(c.warmup),
            duration: Duration::from_secs_f64(c.duration),
            max_p99: Duration::from_millis(c.max_p99_ms),
            deflate: c.deflate,
        }
    }

    pub(crate) async fn run(
        &self,
        scenario: &str,
        t: &Target,
        p: &Point,
    ) -> anyhow::Result<Outcome> {
        self.control.target.store(t.sink, Ordering::SeqCst);
        self.control
            .tag_bucket
            .store(p.filter == FilterMode::Selective, Ordering::SeqCst);
        self.control
            .tag_device
            .store(p.filter == FilterMode::Device, Ordering::SeqCst);
        self.control
            .set_spread(produce::Spread::for_clients(p.clients));
        let watched = Watched {
            gateway: t.pid,
            broker: self.broker,
        };
        let o = load::run(p, &self.control, watched).await?;
        println!("{}", load::table_row(&o));
        println!("{}", o.json(scenario));
        // Let the server notice the closed connections before the next point.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(o)
    }

    /// Steps the rate up until a point fails; returns every point and the best sustainable one.
    pub(crate) async fn sweep(
        &self,
        scenario: &str,
        c: &Common,
        s: &SweepArgs,
        t: &Target,
        stalled: f64,
    ) -> anyhow::Result<(Vec<Outcome>, Option<Outcome>)> {
        let mut all = Vec::new();
        let mut best: Option<Outcome> = None;
        let mut rate = s.start_rate.max(1);
        while rate <= s.max_rate {
            let mut o = self
                .run(scenario, t, &self.point(c, t, rate, stalled))
                .await?;
            if !o.sustainable {
                // The machine is shared: one retry before calling the rate unsustainable.
                all.push(o);
                o = self
                    .run(scenario, t, &self.point(c, t, rate, stalled))
                    .await?;
            }
            let ok = o.sustainable;
            if ok {
                best = Some(o.clone());
            }
            all.push(o);
            if !ok {
                break;
            }
            rate = ((rate as f64 * s.factor).round() as u64).max(rate + 1);
        }
        Ok((all, best))
    }

    /// A sweep per server; the JSON summary with the ratio of the maxima.
    pub(crate) async fn sweep_all(
        &self,
        scenario: &str,
        c: &Common,
        s: &SweepArgs,
        stalled: f64,
    ) -> anyhow::Result<Vec<Option<Outcome>>> {
        banner(c, stalled);
        let mut bests = Vec::new();
        for t in &self.targets {
            let (_, best) = self.sweep(scenario, c, s, t, stalled).await?;
            bests.push(best);
        }
        let mut summary = serde_json::json!({"wsload": "summary", "scenario": scenario});
        for (t, b) in self.targets.iter().zip(&bests) {
            summary[format!("{}_max_sustainable", t.protocol.name())] = summary_of(b);
        }
        if let [Some(a), Some(b)] = &bests[..] {
            summary["ratio_lakewire_to_centrifugo"] =
                ratio(a.deliveries_per_s(), b.deliveries_per_s()).into();
            println!(
                "{scenario}: max sustainable deliveries/s lakewire {:.0}, centrifugo {:.0}: ratio {:.2}",
                a.deliveries_per_s(),
                b.deliveries_per_s(),
                a.deliveries_per_s() / b.deliveries_per_s().max(1.0)
            );
        }
        println!("{summary}");
        Ok(bests)
    }

    pub(crate) fn finish(mut self) -> anyhow::Result<()> {
        self.control.stop.store(true, Ordering::SeqCst);
        if let Some(p) = self.producer.take() {
            match p.join() {
                Ok(r) => r?,
                Err(_) => bail!("the producer thread panicked"),
            }
        }
        Ok(())
    }
}
