//! What the scenarios print besides the table: the banner, the JSON summary of a point, and
//! ratios between two servers' figures.

use lakewire_wsload::load::{self, Outcome};
use lakewire_wsload::procstat;

use crate::Common;

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 100.0).round() / 100.0
    } else {
        f64::NAN
    }
}

pub(crate) fn banner(c: &Common, stalled: f64) {
    println!(
        "wsload: {} clients ({}% stalled, filter {:?}), {} B records; machine: {} cores shared by the load tool, the server and the Kafka broker; loadavg {}",
        c.clients,
        stalled * 100.0,
        c.filter,
        c.record_bytes,
        procstat::cores(),
        procstat::loadavg()
    );
    println!("{}", load::table_header());
}

pub(crate) fn summary_of(o: &Option<Outcome>) -> serde_json::Value {
    match o {
        Some(o) => serde_json::json!({
            "server": o.protocol.name(),
            "rate": o.rate,
            "deliveries_per_s": o.deliveries_per_s().round(),
            "per_fast_client_per_s": (o.per_fast_client() * 10.0).round() / 10.0,
            "p50_ms": o.p50_ms, "p99_ms": o.p99_ms,
            "gateway_cpu_pct": o.gateway_cpu_pct.map(|c| c.round()),
            "gateway_peak_rss_mib": o.gateway_peak_rss_kib.map(|k| (k as f64 / 1024.0).round()),
        }),
        None => serde_json::Value::Null,
    }
}
