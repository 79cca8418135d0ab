//! The load tool against a real broker (`TEST_KAFKA_BROKERS`, see `integration-tests/run-all`)
//! and an in-process gateway: a short, small run must count every delivery it should.
#![cfg(feature = "real-kafka")]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lakewire::config::Config;
use lakewire_wsload::gateway::{config_toml, create_topic, http_status, unique_topic};
use lakewire_wsload::load::{self, FilterMode, Point, Protocol, Watched};
use lakewire_wsload::produce::{self, Control, Sink};

fn brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

#[test]
fn a_small_run_counts_every_delivery_and_survives_stalled_clients() -> anyhow::Result<()> {
    let brokers = brokers();
    let topic = unique_topic();
    // The gateway on its own multi-threaded runtime, as in production.
    let gw_rt = tokio::runtime::Runtime::new()?;
    let running = gw_rt.block_on(async {
        create_topic(&brokers, &topic, 2).await?;
        let config =
            Config::from_toml_and_env(&config_toml(&brokers, &topic, 0, 1024), &[], "test")?;
        let running = lakewire::app::start(config).await?;
        for _ in 0..200 {
            if http_status(running.addr, "/readyz").await? == 200 {
                return Ok(running);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("gateway not ready")
    })?;
    let control = Arc::new(Control::default());
    let sinks = vec![Sink {
        topic: topic.clone(),
        centrifugo_channel: None,
    }];
    let producer = produce::start(&brokers, sinks, 150, control.clone())?;
    let point = Point {
        protocol: Protocol::Lakewire,
        addr: running.addr,
        topic: topic.clone(),
        clients: 20,
        stalled: 0.1,
        filter: FilterMode::None,
        rate: 200,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(1),
        max_p99: Duration::from_secs(5),
        deflate: false,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let outcome = local.block_on(&rt, load::run(&point, &control, Watched::default()));
    control.stop.store(true, Ordering::SeqCst);
    let produced = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))?;
    gw_rt.block_on(running.stop());
    produced?;
    let o = outcome?;
    assert_eq!((o.fast, o.stalled), (18, 2));
    assert!(o.produced >= 100, "{o:?}");
    assert_eq!(Some(o.deliveries), o.expected, "{o:?}");
    assert_eq!((o.lagged_frames, o.errors, o.closed), (0, 0, 0), "{o:?}");
    assert!(
        o.p50_ms > 0.0 && o.p50_ms <= o.p99_ms && o.p99_ms <= o.max_ms,
        "{o:?}"
    );
    assert!(o.sustainable, "{o:?}");

    // The connections scenario's client side: idle subscribed connections from several
    // loopback source addresses, all subscribed, none closed.
    let gw_rt = tokio::runtime::Runtime::new()?;
    let running = gw_rt.block_on(async {
        let config =
            Config::from_toml_and_env(&config_toml(&brokers, &topic, 0, 1024), &[], "test")?;
        Ok::<_, anyhow::Error>(lakewire::app::start(config).await?)
    })?;
    let idle = local.block_on(
        &rt,
        load::idle(
            Protocol::Lakewire,
            running.addr,
            &topic,
            300,
            std::process::id(),
            Duration::from_millis(100),
            false,
        ),
    );
    gw_rt.block_on(running.stop());
    let idle = idle?;
    assert_eq!(idle.connections, 300);
    assert!(idle.rss_after_kib > 0, "{idle:?}");
    Ok(())
}
