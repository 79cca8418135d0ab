//! Tail: `lakewire tail`, a terminal client of protocol v1 for ops teams. Input: a gateway URL
//! and one subscription; output: one JSON line per record on stdout (or an aligned table), with
//! `lagged` / `gap` notices on stderr.
//!
//! Like `lakewire-client.js`, it reconnects with backoff and resumes from the next offset of
//! every partition (the `subscribed` frame's `start` for a partition it has seen nothing of), so
//! a gateway restart loses and repeats nothing that is still in Kafka.
//!
//! It writes its `subscribe` and reads the server's frames with the [`crate::protocol`] types.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::protocol::{ClientMessage, ServerFrame, StartFrom, Subscribe};

/// What `lakewire tail` was asked for.
#[derive(Debug, Clone)]
pub struct TailArgs {
    /// `ws://host:port` or `ws://host:port/ws`.
    pub url: String,
    pub topic: String,
    pub filter: Option<String>,
    pub fields: Vec<String>,
    /// The protocol's `from`, already parsed.
    pub from: StartFrom,
    pub token: Option<String>,
    pub table: bool,
    pub colour: bool,
}

/// Why tail stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The gateway refused the subscription (the message is the server's).
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    /// A bad `--url` or `--token`.
    #[error("{0}")]
    Usage(String),
    /// stdout or stderr failed for another reason than a closed pipe.
    #[error("cannot write: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses `--from`: `latest`, `earliest`, offsets (`0:42,1:17`), a time in ms since the epoch,
/// an RFC 3339 UTC time (`2026-11-27T08:00:00Z`), or a time ago (`-30s`, `-5m`, `-2h`, `-1d`).
pub fn parse_from(s: &str, now_ms: i64) -> Result<StartFrom, String> {
    let s = s.trim();
    match s {
        "latest" => return Ok(StartFrom::Latest),
        "earliest" => return Ok(StartFrom::Earliest),
        _ => {}
    }
    if s.contains(':') && !s.contains('T') {
        // The same `partition:offset,...` form as an SSE position (Last-Event-ID).
        return crate::sse::parse_position(s).map(StartFrom::Offsets);
    }
    if let Some(ago) = s.strip_prefix('-') {
        let (n, unit) = ago.split_at(ago.len().saturating_sub(1));
        let n: i64 = n
            .parse()
            .map_err(|_| format!("{s:?}: expected e.g. -30s, -5m"))?;
        let ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
        };
        return Ok(StartFrom::Timestamp(now_ms - n * ms));
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(StartFrom::Timestamp(ms));
    }
    rfc3339_ms(s).map(StartFrom::Timestamp).ok_or_else(|| {
        format!(
            "{s:?}: expected latest, earliest, PARTITION:OFFSET[,...], ms since the epoch, \
                 an RFC 3339 UTC time or -N(s|m|h|d)"
        )
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` to ms since the epoch.
fn rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let frac_ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1_000 + frac_ms)
}

/// The `/ws` URL for `--url`: a bare `ws://host:port` gets `/ws`.
pub fn ws_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if after_scheme.contains('/') {
        url.to_string()
    } else {
        format!("{url}/ws")
    }
}

/// Per partition, where to resume: the offset after the last record printed, or the
/// subscription's start for a partition with none yet.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Positions {
    next: BTreeMap<i32, i64>,
    known: bool,
}

impl Positions {
    /// Takes a `subscribed` frame's `start` (partition numbers as text, as in the JSON).
    pub fn subscribed(&mut self, start: &BTreeMap<String, i64>) {
        for (p, &o) in start {
            if let Ok(p) = p.parse::<i32>() {
                let e = self.next.entry(p).or_insert(o);
                *e = (*e).max(o);
            }
        }
        self.known = true;
    }

    /// Takes a record.
    pub fn record(&mut self, r: &Value) {
        if let (Some(p), Some(o)) = (r["partition"].as_i64(), r["offset"].as_i64()) {
            let e = self.next.entry(p as i32).or_insert(o + 1);
            *e = (*e).max(o + 1);
        }
    }

    /// The `from` for the next (re)subscribe: `initial` until the server has said where the
    /// subscription starts.
    pub fn from(&self, initial: &StartFrom) -> StartFrom {
        if !self.known {
            return initial.clone();
        }
        StartFrom::Offsets(self.next.clone())
    }
}

/// Writes records as JSON lines or as a table.
struct Printer {
    table: bool,
    colour: bool,
    /// Column names and widths, from the first record.
    columns: Option<Vec<(String, usize)>>,
}

impl Printer {
    fn print(&mut self, out: &mut impl Write, r: &Value) -> std::io::Result<()> {
        if !self.table {
            return writeln!(out, "{r}");
        }
        let cells = flatten(r);
        let first = self.columns.is_none();
        let columns = self.columns.get_or_insert_with(|| {
            cells
                .iter()
                .map(|(name, v)| (name.clone(), v.chars().count().max(name.len()).clamp(8, 24)))
                .collect()
        });
        let line_for = |pick: &dyn Fn(&str) -> String| {
            columns
                .iter()
                .map(|(name, w)| {
                    let v = pick(name);
                    let v: String = if v.chars().count() > *w {
                        v.chars().take(w.saturating_sub(1)).chain(['…']).collect()
                    } else {
                        v
                    };
                    format!("{v:<w$}")
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        if first {
            let header = line_for(&|name| name.to_string());
            if self.colour {
                writeln!(out, "\x1b[1m{}\x1b[0m", header.trim_end())?;
            } else {
                writeln!(out, "{}", header.trim_end())?;
            }
        }
        let row = line_for(&|name| {
            cells
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        });
        if self.colour {
            // Partition and offset dimmed, the data in the default colour.
            let split = self.meta_width().min(row.len());
            let split = if row.is_char_boundary(split) {
                split
            } else {
                0
            };
            let (meta, data) = row.split_at(split);
            writeln!(out, "\x1b[2m{meta}\x1b[0m{}", data.trim_end())
        } else {
            writeln!(out, "{}", row.trim_end())
        }
    }

    /// The width of the partition and offset columns with their separators.
    fn meta_width(&self) -> usize {
        self.columns
            .as_ref()
            .map_or(0, |c| c.iter().take(2).map(|(_, w)| w + 2).sum())
    }
}

/// A record as (column, text) cells: partition, offset, timestamp, key, then the value's fields
/// (nested objects as dotted names).
fn flatten(r: &Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&name, v, out);
                }
            }
            Value::String(s) => out.push((prefix.to_string(), s.clone())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    for k in ["partition", "offset", "timestamp", "key"] {
        if let Some(v) = r.get(k) {
            walk(k, v, &mut out);
        }
    }
    if let Some(v) = r.get("value") {
        match v {
            Value::Object(_) => walk("", v, &mut out),
            other => walk("value", other, &mut out),
        }
    }
    out
}

/// How a connection ended.
enum Ended {
    /// Ctrl-C, or stdout closed (`| head`): a clean exit.
    Done,
    /// The connection broke: reconnect.
    Lost(String),
}

/// Runs until Ctrl-C, a closed stdout or a refused subscription.
pub async fn run(
    args: TailArgs,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), TailError> {
    let url = ws_url(&args.url);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| TailError::Usage(format!("--url {url}: {e}")))?;
    if let Some(t) = &args.token {
        let v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| TailError::Usage("--token: not a valid header value".into()))?;
        request.headers_mut().insert("authorization", v);
    }
    let mut positions = Positions::default();
    let mut printer = Printer {
        table: args.table,
        colour: args.colour,
        columns: None,
    };
    let mut backoff = Duration::from_millis(250);
    tokio::pin!(stop);
    loop {
        let once = connection(
            &args,
            request.clone(),
            &mut positions,
            &mut printer,
            &mut backoff,
        );
        let ended = tokio::select! {
            _ = &mut stop => return Ok(()),
            e = once => e?,
        };
        match ended {
            Ended::Done => return Ok(()),
            Ended::Lost(why) => {
                notice(&format!(
                    "connection lost ({why}); reconnecting in {backoff:?}"
                ));
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The `subscribe` request of a (re)connection: from where `positions` says to resume.
fn subscribe(args: &TailArgs, positions: &Positions) -> ClientMessage {
    ClientMessage::Subscribe(Subscribe {
        id: "tail".into(),
        topic: args.topic.clone(),
        filter: args.filter.clone(),
        fields: (!args.fields.is_empty()).then(|| args.fields.clone()),
        from: positions.from(&args.from),
    })
}

fn notice(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "lakewire tail: {msg}");
}

async fn connection(
    args: &TailArgs,
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    positions: &mut Positions,
    printer: &mut Printer,
    backoff: &mut Duration,
) -> Result<Ended, TailError> {
    // Offers permessage-deflate: the gateway's `records` frames shrink several times.
    let (mut ws, _) = match crate::deflate::client::connect(request, None, true).await {
        Ok(c) => c,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status();
            if status == 401 || status == 403 {
                return Err(TailError::Refused {
                    code: status.as_u16().to_string(),
                    message: "the gateway refused the connection (check --token)".into(),
                });
            }
            return Ok(Ended::Lost(format!("HTTP {status}")));
        }
        Err(e) => return Ok(Ended::Lost(e.to_string())),
    };
    let sub = subscribe(args, positions).to_json();
    if let Err(e) = ws.send(Message::text(sub)).await {
        return Ok(Ended::Lost(e.to_string()));
    }
    let stdout = std::io::stdout();
    while let Some(msg) = ws.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => return Ok(Ended::Lost(e.to_string())),
        };
        let text = match &msg {
            Message::Text(t) => t.as_str(),
            Message::Close(c) => {
                let why = c
                    .as_ref()
                    .map_or("closed".to_string(), |c| format!("{} {}", c.code, c.reason));
                return Ok(Ended::Lost(why));
            }
            _ => continue,
        };
        let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
            continue;
        };
        match frame {
            ServerFrame::Subscribed { start } => {
                *backoff = Duration::from_millis(250);
                positions.subscribed(&start);
            }
            ServerFrame::Records { records } => {
                let mut out = stdout.lock();
                let written = records
                    .iter()
                    .try_for_each(|r| {
                        positions.record(r);
                        printer.print(&mut out, r)
                    })
                    .and_then(|()| out.flush());
                match written {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        let _ = ws.close(None).await;
                        return Ok(Ended::Done);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            ServerFrame::Lagged { dropped } => notice(&format!(
                "lagged: the gateway dropped {dropped} record(s) this client could not take in time"
            )),
            ServerFrame::Gap {
                partition,
                requested,
                first_available,
            } => notice(&format!(
                "gap: partition {partition} offset {requested} is no longer in Kafka; resuming at {first_available}"
            )),
            ServerFrame::Error { code, message } => {
                return Err(TailError::Refused {
                    code: code.unwrap_or_else(|| "error".into()),
                    message: message.unwrap_or_default(),
                });
            }
            ServerFrame::Other => {}
        }
    }
    Ok(Ended::Lost("closed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What a `from` looks like on the wire.
    fn wire(from: Result<StartFrom, String>) -> Result<Value, String> {
        from.and_then(|f| serde_json::to_value(f).map_err(|e| e.to_string()))
    }

    #[test]
    fn from_accepts_every_documented_form() {
        let now = 1_000_000_000;
        let parse_from = |s: &str, now: i64| wire(parse_from(s, now));
        assert_eq!(parse_from("latest", now), Ok(json!("latest")));
        assert_eq!(parse_from("earliest", now), Ok(json!("earliest")));
        assert_eq!(
            parse_from("0:42,1:7", now),
            Ok(json!({"offsets": {"0": 42, "1": 7}}))
        );
        assert_eq!(
            parse_from("1700000000000", now),
            Ok(json!({"timestamp": 1_700_000_000_000_i64}))
        );
        assert_eq!(
            parse_from("-5m", now),
            Ok(json!({"timestamp": now - 300_000}))
        );
        assert_eq!(
            parse_from("2026-11-27T08:00:00Z", now),
            Ok(json!({"timestamp": 1_795_766_400_000_i64}))
        );
        assert_eq!(
            parse_from("1970-01-01T00:00:01.5Z", now),
            Ok(json!({"timestamp": 1_500}))
        );
        assert!(parse_from("yesterday", now).is_err());
        assert!(parse_from("0:x", now).is_err());
        assert!(parse_from("-5y", now).is_err());
    }

    #[test]
    fn urls_get_the_ws_path_when_they_have_none() {
        assert_eq!(ws_url("ws://h:8080"), "ws://h:8080/ws");
        assert_eq!(ws_url("ws://h:8080/"), "ws://h:8080/ws");
        assert_eq!(ws_url("ws://h:8080/gw/ws"), "ws://h:8080/gw/ws");
    }

    #[test]
    fn positions_resume_every_partition() -> anyhow::Result<()> {
        let initial = StartFrom::Latest;
        let mut p = Positions::default();
        let subscribed = |p: &mut Positions, frame: Value| -> anyhow::Result<()> {
            match serde_json::from_value(frame)? {
                ServerFrame::Subscribed { start } => p.subscribed(&start),
                other => anyhow::bail!("not subscribed: {other:?}"),
            }
            Ok(())
        };
        let from = |p: &Positions| wire(Ok(p.from(&initial)));
        assert_eq!(p.from(&initial), initial, "before subscribed: as asked");
        subscribed(
            &mut p,
            json!({"type":"subscribed","partitions":[0,1],"start":{"0":10,"1":4}}),
        )?;
        p.record(&json!({"partition":0,"offset":10}));
        p.record(&json!({"partition":0,"offset":11}));
        assert_eq!(from(&p), Ok(json!({"offsets": {"0": 12, "1": 4}})));
        // A resume's `subscribed` does not move a position back.
        subscribed(
            &mut p,
            json!({"type":"subscribed","partitions":[0,1],"start":{"0":12,"1":4}}),
        )?;
        assert_eq!(from(&p), Ok(json!({"offsets": {"0": 12, "1": 4}})));
        Ok(())
    }

    #[test]
    fn the_subscribe_request_is_the_one_tail_always_sent() -> anyhow::Result<()> {
        // How tail built it with `json!` before it used the protocol types.
        let old = |args: &TailArgs, from: Value| {
            let mut sub = json!({
                "op": "subscribe",
                "id": "tail",
                "topic": args.topic,
                "from": from,
            });
            if let Some(f) = &args.filter {
                sub["filter"] = json!(f);
            }
            if !args.fields.is_empty() {
                sub["fields"] = json!(args.fields);
            }
            sub.to_string()
        };
        let mut args = TailArgs {
            url: "ws://h".into(),
            topic: "trades".into(),
            filter: None,
            fields: Vec::new(),
            from: parse_from("-5m", 1_000_000_000).map_err(anyhow::Error::msg)?,
            token: None,
            table: false,
            colour: false,
        };
        let mut positions = Positions::default();
        let text = subscribe(&args, &positions).to_json();
        assert_eq!(text, old(&args, serde_json::to_value(&args.from)?));
        assert_eq!(
            text,
            r#"{"op":"subscribe","id":"tail","topic":"trades","from":{"timestamp":999700000}}"#
        );
        args.filter = Some("value.side == 'buy'".into());
        args.fields = vec!["value.symbol".into(), "value.side".into()];
        positions.subscribed(&BTreeMap::from([("1".into(), 4), ("0".into(), 10)]));
        let text = subscribe(&args, &positions).to_json();
        assert_eq!(text, old(&args, json!({"offsets": {"0": 10, "1": 4}})));
        for from in ["latest", "earliest", "0:42,3:7", "1700000000000"] {
            args.from = parse_from(from, 0).map_err(anyhow::Error::msg)?;
            let asked = subscribe(&args, &Positions::default()).to_json();
            assert_eq!(
                asked,
                old(&args, serde_json::to_value(&args.from)?),
                "{from}"
            );
        }
        Ok(())
    }

    #[test]
    fn table_rows_line_up_under_the_header() -> std::io::Result<()> {
        let mut p = Printer {
            table: true,
            colour: false,
            columns: None,
        };
        let mut out = Vec::new();
        for (o, sym) in [(1, "ACME"), (2, "UMBRELLA")] {
            p.print(
                &mut out,
                &json!({"partition":0,"offset":o,"timestamp":5,"key":sym,"value":{"symbol":sym,"px":{"bid":1.5}}}),
            )?;
        }
        let text = String::from_utf8_lossy(&out).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("partition  offset    timestamp  key       symbol"),
            "{text}"
        );
        assert!(lines[0].contains("px.bid"), "{text}");
        let col = lines[0].find("symbol").unwrap_or(0);
        assert_eq!(&lines[2][col..col + 8], "UMBRELLA");
        Ok(())
    }
}
