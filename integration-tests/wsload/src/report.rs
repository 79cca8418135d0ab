//! The table `wsload` prints: one line per measured point. `wireB/d` is the bytes read from
//! the sockets per delivered record, `plB/d` the (inflated) payload bytes per delivered record,
//! both over the measurement window.

use crate::load::Outcome;

/// The header of the human table.
pub fn table_header() -> String {
    format!(
        "{:>12} {:>7} {:>6} {:>5} {:>11} {:>9} {:>5} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>5} {:>6}  {}",
        "server",
        "rate/s",
        "fast",
        "stall",
        "deliv/s",
        "deliv%",
        "rec/f",
        "p50ms",
        "p90ms",
        "p99ms",
        "maxms",
        "lagged",
        "wireB/d",
        "plB/d",
        "gwCPU%",
        "gwMiB",
        "kfCPU%",
        "tlCPU%",
        "mach%",
        "othCPU",
        "ok"
    )
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn opt1(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

/// One row of the human table (`+z` after the server's name: permessage-deflate on).
pub fn table_row(o: &Outcome) -> String {
    let server = if o.deflate {
        format!("{}+z", o.protocol.name())
    } else {
        o.protocol.name().to_string()
    };
    let pct = o.expected.map_or("-".into(), |e| {
        format!("{:.2}", o.deliveries as f64 / e.max(1) as f64 * 100.0)
    });
    format!(
        "{:>12} {:>7} {:>6} {:>5} {:>11.0} {:>9} {:>5.1} {:>7.1} {:>7.1} {:>7.1} {:>8.1} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6.0} {:>5.0} {:>6.0}  {}",
        server,
        o.rate,
        o.fast,
        o.stalled,
        o.deliveries_per_s(),
        pct,
        o.deliveries as f64 / o.frames.max(1) as f64,
        o.p50_ms,
        o.p90_ms,
        o.p99_ms,
        o.max_ms,
        o.lagged_frames,
        opt1(o.wire_bytes_per_delivery()),
        opt1(o.payload_bytes_per_delivery()),
        opt(o.gateway_cpu_pct),
        opt(o.gateway_peak_rss_kib.map(|k| k as f64 / 1024.0)),
        opt(o.broker_cpu_pct),
        o.tool_cpu_pct,
        o.machine_busy_pct,
        o.others_cpu_pct,
        if o.sustainable {
            "yes".to_string()
        } else {
            format!("no: {}", o.why_not.join("; "))
        }
    )
}
