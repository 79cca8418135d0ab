//! What each load client subscribes with: the filter modes, and the subscribe request of client
//! `i` for Lakewire (a CEL filter) or Centrifugo (a tags filter on the same field), so that both
//! servers deliver the same records to the same clients.

use crate::load::Protocol;
use crate::produce::Spread;

/// What the clients subscribe with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FilterMode {
    /// No filter: every client receives every record.
    None,
    /// Each client its own CEL filter matching about 1% of the records
    /// (`value.b >= i && value.b < i + 10`, `b` uniform over 0..1010; for more than 1,000
    /// clients wider, see [`Spread`]).
    Selective,
    /// Each client its own equality filter, `value.device == "d<i>"`, the records' `device`
    /// spread over one value per client: each record matches one client.
    Device,
}

/// The subscribe request of client `i` of `clients` (for Centrifugo, its connect and subscribe
/// commands in one frame; the selective filter becomes a tags filter on the `b` tag the
/// producer adds, the device filter one on the `device` tag).
pub fn subscribe_request(
    protocol: Protocol,
    topic: &str,
    i: usize,
    clients: usize,
    filter: FilterMode,
) -> String {
    let spread = Spread::for_clients(clients);
    let lo = i as u64 % (spread.buckets - spread.width);
    let hi = lo + spread.width;
    let device = format!("d{}", i as u64 % spread.devices);
    match protocol {
        Protocol::Lakewire => {
            let mut req =
                serde_json::json!({"op": "subscribe", "id": "s", "topic": topic, "from": "latest"});
            match filter {
                FilterMode::Selective => {
                    req["filter"] = format!("value.b >= {lo} && value.b < {hi}").into();
                }
                FilterMode::Device => {
                    req["filter"] = format!("value.device == {device:?}").into();
                }
                FilterMode::None => {}
            }
            req.to_string()
        }
        Protocol::Centrifugo => {
            let mut sub = serde_json::json!({"channel": topic});
            match filter {
                FilterMode::Selective => {
                    sub["tf"] = serde_json::json!({"op": "and", "nodes": [
                        {"key": "b", "cmp": "gte", "val": lo.to_string()},
                        {"key": "b", "cmp": "lt", "val": hi.to_string()},
                    ]});
                }
                FilterMode::Device => {
                    sub["tf"] = serde_json::json!({"key": "device", "cmp": "eq", "val": device});
                }
                FilterMode::None => {}
            }
            format!(
                "{}\n{}",
                serde_json::json!({"id": 1, "connect": {}}),
                serde_json::json!({"id": 2, "subscribe": sub})
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selective_filters_differ_per_client_and_cover_about_one_percent() -> anyhow::Result<()> {
        let req = |i, f| subscribe_request(Protocol::Lakewire, "t", i, 1000, f);
        let a: serde_json::Value = serde_json::from_str(&req(3, FilterMode::Selective))?;
        let b: serde_json::Value = serde_json::from_str(&req(4, FilterMode::Selective))?;
        assert_eq!(a["filter"], "value.b >= 3 && value.b < 13");
        assert_ne!(a["filter"], b["filter"]);
        let wide = subscribe_request(Protocol::Lakewire, "t", 9999, 10_000, FilterMode::Selective);
        let wide: serde_json::Value = serde_json::from_str(&wide)?;
        assert_eq!(wide["filter"], "value.b >= 9999 && value.b < 10099");
        let d: serde_json::Value = serde_json::from_str(&req(7, FilterMode::Device))?;
        assert_eq!(d["filter"], "value.device == \"d7\"");
        let plain: serde_json::Value = serde_json::from_str(&req(3, FilterMode::None))?;
        assert!(plain.get("filter").is_none());
        assert_eq!(plain["op"], "subscribe");
        Ok(())
    }

    #[test]
    fn centrifugo_requests_connect_then_subscribe_with_the_same_one_percent() -> anyhow::Result<()>
    {
        let req = subscribe_request(
            Protocol::Centrifugo,
            "wsload",
            3,
            1000,
            FilterMode::Selective,
        );
        let lines: Vec<serde_json::Value> = req
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], serde_json::json!({"id": 1, "connect": {}}));
        assert_eq!(lines[1]["id"], 2);
        assert_eq!(lines[1]["subscribe"]["channel"], "wsload");
        let nodes = &lines[1]["subscribe"]["tf"]["nodes"];
        assert_eq!(
            nodes[0],
            serde_json::json!({"key": "b", "cmp": "gte", "val": "3"})
        );
        assert_eq!(
            nodes[1],
            serde_json::json!({"key": "b", "cmp": "lt", "val": "13"})
        );
        let plain = subscribe_request(Protocol::Centrifugo, "wsload", 3, 1000, FilterMode::None);
        let d = subscribe_request(Protocol::Centrifugo, "wsload", 3, 1000, FilterMode::Device);
        let d: Vec<serde_json::Value> = d
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(
            d[1]["subscribe"]["tf"],
            serde_json::json!({"key": "device", "cmp": "eq", "val": "d3"})
        );
        assert!(!plain.contains("\"tf\""));
        Ok(())
    }
}
