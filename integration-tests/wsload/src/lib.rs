//! `wsload`: a load tool for the Lakewire gateway. It produces JSON records to a real Kafka at
//! a target rate, each value stamped with its produce time, opens N WebSocket clients (protocol
//! v1) to a gateway, and reports deliveries per second, produce→receive latency, `lagged`
//! counts, and the gateway's CPU and peak RSS.
//!
//! - [`produce`]: the rate-paced producer thread and the measurement window;
//! - [`ws`]: a minimal WebSocket client (handshake, frame parsing in place);
//! - [`inflate`]: permessage-deflate (RFC 7692) on the receiving side;
//! - [`scan`]: what a client takes from a frame (type, stamps) without parsing the JSON;
//! - [`load`]: one measured point (clients, window, figures, the human table row);
//! - [`subscribe`]: what each client subscribes with, for Lakewire and for Centrifugo;
//! - [`gateway`]: starting a gateway with a generated configuration, topics;
//! - [`procstat`]: CPU and memory from `/proc`;
//! - [`kafkalat`]: the Kafka leg's latency alone, through librdkafka's two consumer APIs;
//! - [`wire`]: `wsload wire`, bytes on the wire per record of one client of a running gateway;
//! - [`sinkbench`]: the sink scenario, Kafka → Parquet files end to end, against the decode path.

pub mod gateway;
pub mod idle;
pub mod inflate;
pub mod kafkalat;
pub mod landed;
pub mod load;
pub mod procstat;
pub mod produce;
pub mod report;
pub mod scan;
pub mod sinkbench;
pub mod subscribe;
pub mod wire;
pub mod ws;

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
