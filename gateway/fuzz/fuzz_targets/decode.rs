//! The decode stage on hostile payloads, in every format: JSON, and Avro in the Confluent
//! (`0x00` + schema id), single-object (`0xC3 0x01` + fingerprint) and raw framings, plus raw
//! with a reader schema (apache-avro's resolution path).
//!
//! Input: one selector byte, then the Kafka payload. Selector 0: JSON; 1: Confluent; 2:
//! single-object; 3 + i: raw with `RAW[i % RAW.len()]` (see `raw_schemas`). The schemas are the
//! interop vectors' (`integration-tests/avro/vectors.json`), preloaded in the registry cache
//! under their ids and written to a schemas folder for single-object, so no registry is needed;
//! then `schemas/order.avsc`; then an order resolved to an evolved reader schema.
//!
//! Properties: no panic; a decoded record's value (and its envelope) is valid JSON.
#![no_main]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use lakewire::config::{Config, PayloadFormat, TopicConfig};
use lakewire::decode::schema::ParsedSchema;
use lakewire::decode::{DecodeContext, Decoder};
use lakewire::metrics::Metrics;
use lakewire::record::RawRecord;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

const VECTORS: &str = include_str!("../../../integration-tests/avro/vectors.json");
const ORDER: &str = include_str!("../../../schemas/order.avsc");

/// `schemas/order.avsc` evolved, as a reader schema: `customer` gone, `channel` added with a
/// default.
fn order_v2() -> String {
    let mut schema: serde_json::Value =
        serde_json::from_str(ORDER).unwrap_or_else(|e| fail("order.avsc", e));
    let Some(fields) = schema["fields"].as_array_mut() else {
        fail("order.avsc", "no fields")
    };
    fields.retain(|f| f["name"] != "customer");
    fields.push(serde_json::json!({"name": "channel", "type": "string", "default": "web"}));
    schema.to_string()
}

struct Decoders {
    json: Decoder,
    confluent: Decoder,
    single_object: Decoder,
    raw: Vec<Decoder>,
}

#[derive(serde::Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(serde::Deserialize)]
struct Vector {
    schema: String,
    schema_id: u32,
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("fuzz setup: {what}: {e}")
}

/// The vectors' schemas by id, and their distinct texts in order of first appearance (the
/// order `gateway/fuzz/seeds.py` numbers the raw selectors in).
fn vector_schemas() -> (Vec<(u32, String)>, Vec<String>) {
    let v: Vectors = serde_json::from_str(VECTORS).unwrap_or_else(|e| fail("vectors.json", e));
    let mut by_id = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    for x in v.vectors {
        if !by_id.iter().any(|(id, _)| *id == x.schema_id) {
            by_id.push((x.schema_id, x.schema.clone()));
        }
        if !texts.contains(&x.schema) {
            texts.push(x.schema);
        }
    }
    (by_id, texts)
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap_or_else(|e| fail(&path.display().to_string(), e));
    path.to_path_buf()
}

fn decoders() -> &'static Decoders {
    static D: OnceLock<Decoders> = OnceLock::new();
    D.get_or_init(|| {
        let (by_id, texts) = vector_schemas();
        let dir = std::env::temp_dir().join(format!("lakewire-fuzz-{}", std::process::id()));
        let schemas = dir.join("schemas");
        std::fs::create_dir_all(&schemas).unwrap_or_else(|e| fail("temp dir", e));
        // The schemas folder for single-object: every vector schema whose fingerprints do not
        // clash with another that decodes differently (the gateway refuses such a folder).
        let mut plans: HashMap<u64, ParsedSchema> = HashMap::new();
        let mut raw_paths = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let s = ParsedSchema::parse(text).unwrap_or_else(|e| fail(text, e));
            raw_paths.push((write(&dir.join(format!("raw-{i}.avsc")), text), None));
            let fps: Vec<u64> = std::iter::once(s.fingerprint)
                .chain(s.python_fingerprint)
                .collect();
            if fps
                .iter()
                .all(|fp| plans.get(fp).is_none_or(|o| o.plan == s.plan))
            {
                write(&schemas.join(format!("s-{i}.avsc")), text);
                for fp in fps {
                    plans.insert(
                        fp,
                        ParsedSchema::parse(text).unwrap_or_else(|e| fail(text, e)),
                    );
                }
            }
        }
        raw_paths.push((write(&dir.join("order.avsc"), ORDER), None));
        raw_paths.push((
            dir.join("order.avsc"),
            Some(write(&dir.join("order_v2.avsc"), &order_v2())),
        ));

        let text = format!(
            "schemas_dir = {:?}\n[kafka]\nbrokers = \"127.0.0.1:1\"\n\
             [schema_registry]\nurl = \"http://127.0.0.1:1\"\n",
            schemas.display().to_string()
        );
        let config =
            Config::from_toml_and_env(&text, &[], "fuzz").unwrap_or_else(|e| fail("config", e));
        let mut topics = vec![
            TopicConfig::new("so", PayloadFormat::SingleObject),
            TopicConfig::new("cf", PayloadFormat::Confluent),
            TopicConfig::new("js", PayloadFormat::Json),
        ];
        for (i, (schema, reader)) in raw_paths.into_iter().enumerate() {
            let mut t = TopicConfig::new(format!("raw{i}"), PayloadFormat::Raw);
            t.schema = Some(schema);
            t.reader_schema = reader;
            topics.push(t);
        }
        let config = Config { topics, ..config };
        let cx = DecodeContext::new(&config, &Metrics::default())
            .unwrap_or_else(|e| fail("decode context", e));
        let Some(registry) = cx.registry() else {
            fail("registry", "none configured")
        };
        for (id, text) in by_id {
            let s = ParsedSchema::parse(&text).unwrap_or_else(|e| fail(&text, e));
            registry.preload(id, Arc::new(s));
        }
        let mut ds = config
            .topics
            .iter()
            .map(|t| Decoder::new(t, &cx).unwrap_or_else(|e| fail(&t.name, e)));
        let mut next = || ds.next().unwrap_or_else(|| fail("decoders", "too few"));
        let single_object = next();
        let confluent = next();
        let json = next();
        let raw = ds.collect();
        let _ = std::fs::remove_dir_all(&dir);
        Decoders {
            json,
            confluent,
            single_object,
            raw,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let d = decoders();
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let decoder = match selector {
        0 => &d.json,
        1 => &d.confluent,
        2 => &d.single_object,
        n => &d.raw[(usize::from(n) - 3) % d.raw.len()],
    };
    let raw = RawRecord {
        partition: 0,
        offset: 1,
        timestamp: Some(1_732_690_000_000),
        key: None,
        payload: Some(payload),
        headers: None,
    };
    if let Ok(record) = decoder.decode(&raw) {
        if let Err(e) = serde_json::from_slice::<IgnoredAny>(&record.value_json) {
            panic!(
                "decoded value is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&record.value_json)
            );
        }
        let mut out = Vec::new();
        lakewire::protocol::write_record(&record, &mut out);
        if let Err(e) = serde_json::from_slice::<IgnoredAny>(&out) {
            panic!(
                "envelope is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
});
