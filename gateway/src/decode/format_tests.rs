//! Tests of the Avro formats end to end through [`Decoder`]: framings, bad records, the registry
//! client (against a small HTTP server in the test), reader schemas and keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use apache_avro::types::Value as AV;

use super::*;
use crate::config::Config;

const TRADE: &str = r#"{"type":"record","name":"Trade","namespace":"t","fields":[
    {"name":"id","type":"long"},
    {"name":"sym","type":"string"},
    {"name":"px","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}}]}"#;

/// The same record evolved: `sym` gone, `venue` added with a default.
const TRADE_V2: &str = r#"{"type":"record","name":"Trade","namespace":"t","fields":[
    {"name":"id","type":"long"},
    {"name":"px","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
    {"name":"venue","type":"string","default":"XNYS"}]}"#;

fn trade(id: i64) -> anyhow::Result<Vec<u8>> {
    let schema = apache_avro::Schema::parse_str(TRADE)?;
    let v = AV::Record(vec![
        ("id".into(), AV::Long(id)),
        ("sym".into(), AV::String("AC\"ME".into())),
        (
            "px".into(),
            AV::Decimal(apache_avro::Decimal::from(vec![0x30, 0x39])),
        ),
    ]);
    Ok(apache_avro::to_avro_datum(&schema, v)?)
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
}

fn setup() -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir()?;
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas)?;
    std::fs::write(schemas.join("trade.avsc"), TRADE)?;
    std::fs::write(dir.path().join("trade_v2.avsc"), TRADE_V2)?;
    std::fs::write(dir.path().join("key.avsc"), r#""string""#)?;
    Ok(Setup {
        dir: dir.path().to_path_buf(),
        _dir: dir,
    })
}

fn decoder(s: &Setup, topic: &str, registry: Option<&str>) -> anyhow::Result<Decoder> {
    let d = s.dir.display();
    let registry = registry.map_or(String::new(), |url| {
        format!("[schema_registry]\nurl = \"{url}\"\nusername = \"u\"\npassword = \"p\"\nmax_backoff_ms = 50\n")
    });
    let text = format!(
        "schemas_dir = \"{d}/schemas\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\n{registry}\n[[topics]]\n{topic}\n"
    );
    let config = Config::from_toml_and_env(&text, &[], "test")?;
    let cx = DecodeContext::new(&config, &Metrics::default())?;
    Ok(Decoder::new(&config.topics[0], &cx)?)
}

fn raw<'a>(key: Option<&'a [u8]>, payload: &'a [u8]) -> RawRecord<'a> {
    RawRecord {
        partition: 0,
        offset: 7,
        timestamp: None,
        key,
        payload: Some(payload),
        headers: None,
    }
}

fn value(d: &Decoder, payload: &[u8]) -> Result<String, DecodeError> {
    let r = d.decode(&raw(None, payload))?;
    Ok(String::from_utf8_lossy(&r.value_json).into_owned())
}

fn reason(r: Result<String, DecodeError>) -> &'static str {
    match r {
        Ok(v) => panic!("decoded {v}"),
        Err(e) => e.reason(),
    }
}

const TRADE_JSON: &str = r#"{"id":5,"sym":"AC\"ME","px":"123.45"}"#;

#[test]
fn raw_topic_decodes_with_its_schema() -> anyhow::Result<()> {
    let s = setup()?;
    let d = decoder(
        &s,
        &format!(
            "name = \"t\"\nformat = \"raw\"\nschema = \"{}/schemas/trade.avsc\"",
            s.dir.display()
        ),
        None,
    )?;
    assert_eq!(value(&d, &trade(5)?)?, TRADE_JSON);
    let data = trade(5)?;
    assert_eq!(reason(value(&d, &data[..data.len() - 1])), "truncated");
    Ok(())
}

#[test]
fn single_object_matches_the_fingerprint() -> anyhow::Result<()> {
    let s = setup()?;
    let d = decoder(&s, "name = \"t\"\nformat = \"single-object\"", None)?;
    let fp = schema::ParsedSchema::parse(TRADE)?.fingerprint;
    let mut payload = vec![0xc3, 0x01];
    payload.extend_from_slice(&fp.to_le_bytes());
    payload.extend_from_slice(&trade(5)?);
    assert_eq!(value(&d, &payload)?, TRADE_JSON);
    payload[0] = 0x00;
    assert_eq!(reason(value(&d, &payload)), "wrong_magic");
    payload[0] = 0xc3;
    payload[3] ^= 1;
    assert_eq!(reason(value(&d, &payload)), "unknown_fingerprint");
    assert_eq!(reason(value(&d, &[0xc3, 0x01, 1, 2])), "truncated");
    Ok(())
}

#[test]
fn reader_schema_gives_one_shape_and_key_format_decodes_keys() -> anyhow::Result<()> {
    let s = setup()?;
    let d = s.dir.display();
    let d = decoder(
        &s,
        &format!(
            "name = \"t\"\nformat = \"raw\"\nschema = \"{d}/schemas/trade.avsc\"\n\
             reader_schema = \"{d}/trade_v2.avsc\"\nkey_format = \"raw\"\nkey_schema = \"{d}/key.avsc\""
        ),
        None,
    )?;
    let key = apache_avro::to_avro_datum(&apache_avro::Schema::String, AV::String("k-1".into()))?;
    let payload = trade(5)?;
    let r = d.decode(&raw(Some(&key), &payload))?;
    assert_eq!(r.key.as_deref(), Some("k-1"));
    assert_eq!(
        String::from_utf8_lossy(&r.value_json),
        r#"{"id":5,"px":"123.45","venue":"XNYS"}"#
    );
    assert_eq!(
        d.decode(&raw(Some(&[0x09]), &payload))
            .map(|_| ())
            .map_err(|e| e.reason()),
        Err("bad_key")
    );
    Ok(())
}

#[test]
fn reader_schema_refuses_a_huge_block_count_before_allocating() -> anyhow::Result<()> {
    // Found by fuzzing: apache-avro reserved room for a block's claimed item count, so these
    // few bytes (a block of 400 million longs, then nothing) asked for gigabytes.
    let s = setup()?;
    let d = s.dir.display();
    std::fs::write(
        s.dir.join("longs.avsc"),
        r#"{"type":"array","items":"long"}"#,
    )?;
    std::fs::write(
        s.dir.join("doubles.avsc"),
        r#"{"type":"array","items":"double"}"#,
    )?;
    let d = decoder(
        &s,
        &format!(
            "name = \"t\"\nformat = \"raw\"\nschema = \"{d}/longs.avsc\"\n\
             reader_schema = \"{d}/doubles.avsc\""
        ),
        None,
    )?;
    assert_eq!(value(&d, &[0x04, 0x02, 0x04, 0x00])?, "[1.0,2.0]");
    let mut huge = Vec::new();
    let mut n: u64 = 400_000_000 << 1;
    while n >= 0x80 {
        huge.push((n as u8) | 0x80);
        n >>= 7;
    }
    huge.push(n as u8);
    assert_eq!(reason(value(&d, &huge)), "truncated");
    Ok(())
}

/// A registry that answers `GET /schemas/ids/1` with [`TRADE`] after `fail_first` failures, 404
/// for any other id, and 401 without the basic-auth header for `u:p`. A failure is a 503, or
/// with `garbled` a 200 whose body is a proxy's HTML error page.
struct FakeRegistry {
    url: String,
    requests: Arc<AtomicUsize>,
}

async fn fake_registry(fail_first: usize, garbled: bool) -> anyhow::Result<FakeRegistry> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Some(head) = super::protobuf_tests::read_head(&mut sock).await else {
                    return;
                };
                let req = head.to_ascii_lowercase();
                // base64("u:p") = dTpw
                let (status, body) = if !req.contains("authorization: basic dtpw") {
                    ("401 Unauthorized", r#"{"error_code":401}"#.to_string())
                } else if n < fail_first && garbled {
                    (
                        "200 OK",
                        "<html><body>502 Bad Gateway</body></html>".to_string(),
                    )
                } else if n < fail_first {
                    ("503 Service Unavailable", "{}".to_string())
                } else if req.starts_with("get /schemas/ids/1 ") {
                    ("200 OK", serde_json::json!({ "schema": TRADE }).to_string())
                } else {
                    ("404 Not Found", r#"{"error_code":40403}"#.to_string())
                };
                // Slow enough that concurrent lookups overlap.
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                super::protobuf_tests::reply(&mut sock, status, &body).await;
            });
        }
    });
    Ok(FakeRegistry { url, requests })
}

fn confluent(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(datum);
    v
}

#[tokio::test]
async fn confluent_waits_through_outages_and_fetches_each_id_once() -> anyhow::Result<()> {
    let s = setup()?;
    let reg = fake_registry(2, false).await?;
    let d = Arc::new(decoder(
        &s,
        "name = \"t\"\nformat = \"confluent\"",
        Some(&reg.url),
    )?);
    let payload = confluent(1, &trade(5)?);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (d, p) = (d.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let r = raw(None, &p);
            d.prepare(&r).await;
            value(&d, &p).map_err(|e| e.to_string())
        }));
    }
    for t in tasks {
        assert_eq!(t.await?.map_err(anyhow::Error::msg)?, TRADE_JSON);
    }
    // Two 503s, then one successful request shared by all five.
    assert_eq!(reg.requests.load(Ordering::SeqCst), 3);

    let unknown = confluent(9, &trade(5)?);
    d.prepare(&raw(None, &unknown)).await;
    assert_eq!(reason(value(&d, &unknown)), "unknown_schema_id");
    assert_eq!(reason(value(&d, &[1, 0, 0, 0, 1, 2])), "wrong_magic");
    assert_eq!(reason(value(&d, &[0, 0, 0])), "truncated");
    assert_eq!(
        reason(value(&d, &payload[..payload.len() - 2])),
        "truncated"
    );
    // Still cached: no new request for id 1.
    d.prepare(&raw(None, &payload)).await;
    assert_eq!(reg.requests.load(Ordering::SeqCst), 4);
    Ok(())
}

/// A garbled answer (a 200 that is not a schema: a proxy's error page) is waited through like
/// an outage, not taken as the registry's word: before, the id was cached as unusable and its
/// records refused as `bad_schema` (in the sink: dead-lettered or lost).
#[tokio::test]
async fn a_garbled_registry_answer_is_waited_through_like_an_outage() -> anyhow::Result<()> {
    let s = setup()?;
    let reg = fake_registry(2, true).await?;
    let d = decoder(&s, "name = \"t\"\nformat = \"confluent\"", Some(&reg.url))?;
    let payload = confluent(1, &trade(5)?);
    d.prepare(&raw(None, &payload)).await;
    assert_eq!(
        value(&d, &payload).map_err(|e| anyhow::anyhow!("{e}"))?,
        TRADE_JSON
    );
    assert_eq!(reg.requests.load(Ordering::SeqCst), 3);
    Ok(())
}

#[test]
fn config_names_the_key_of_a_bad_schema_setting() -> anyhow::Result<()> {
    let s = setup()?;
    // What `lakewire check` and `lakewire run` report: the file's own checks, then the
    // components built dry (which read the schema files).
    let msg = |topic: &str| match Config::from_toml_and_env(
        &format!("[kafka]\nbrokers = \"b:1\"\n[[topics]]\n{topic}\n"),
        &[],
        "t",
    ) {
        Ok(c) => match crate::app::check(&c) {
            Ok(()) => String::from("accepted"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    assert_eq!(
        msg("name = \"t\"\nformat = \"raw\""),
        "topics[0].schema: required when format = \"raw\""
    );
    assert!(
        msg("name = \"t\"\nformat = \"confluent\"").starts_with("schema_registry: required"),
        "{}",
        msg("name = \"t\"\nformat = \"confluent\"")
    );
    let m = msg("name = \"t\"\nformat = \"raw\"\nschema = \"/nonexistent/x.avsc\"");
    assert!(
        m.starts_with("topics[0].schema: cannot read /nonexistent/x.avsc"),
        "{m}"
    );
    std::fs::write(s.dir.join("bad.avsc"), r#"{"type":"record","name":"R"}"#)?;
    let m = msg(&format!(
        "name = \"t\"\nformat = \"raw\"\nschema = \"{}/bad.avsc\"",
        s.dir.display()
    ));
    assert!(m.starts_with("topics[0].schema:"), "{m}");
    let m = msg("name = \"t\"\nformat = \"json\"\ndead_letter_topic = \"t\"");
    assert_eq!(
        m,
        "topics[0].dead_letter_topic: must differ from the topic itself"
    );
    let m = msg("name = \"t\"\nformat = \"avro\"");
    assert!(m.contains("unknown value \"avro\""), "{m}");
    Ok(())
}
