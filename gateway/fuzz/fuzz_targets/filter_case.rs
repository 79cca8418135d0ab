//! One case of the `filter` fuzz target, shared by the target and by `filter_replay` (which
//! runs saved inputs again and again to tell a leak from a growing corpus).
//!
//! Input: `filter \0 fields \0 value` where `fields` is comma-separated (absent: no projection)
//! and `value` is the record's JSON (used only when it is valid JSON, as decoders guarantee).
//! Limits are the configuration defaults. Properties: no panic; what is rendered is JSON.

use std::sync::{Arc, OnceLock};

use lakewire::filter::{self, Limits, Shape};
use lakewire::record::Record;
use serde::de::IgnoredAny;

fn limits() -> Limits {
    static LIMITS: OnceLock<Limits> = OnceLock::new();
    *LIMITS.get_or_init(|| {
        match lakewire::config::Config::from_toml_and_env(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\n",
            &[],
            "fuzz",
        ) {
            Ok(c) => lakewire::filter::Limits::from(&c.websocket),
            Err(e) => panic!("default config: {e}"),
        }
    })
}

thread_local! {
    static ENV: Arc<cel::Env> = filter::env();
}

/// Compiles the case's shape and renders its record; panics if the output is not JSON.
pub fn run(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let Some(Ok(source)) = parts.next().map(std::str::from_utf8) else {
        return;
    };
    let fields: Option<Vec<String>> = match parts.next().map(std::str::from_utf8) {
        None => None,
        Some(Err(_)) => return,
        Some(Ok(f)) => Some(
            f.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        ),
    };
    let value = parts.next().unwrap_or(b"{}");
    if serde_json::from_slice::<IgnoredAny>(value).is_err() {
        return;
    }
    let filter_src = (!source.is_empty()).then_some(source);
    ENV.with(|env| {
        let Ok(shape) = Shape::new(filter_src, fields.as_deref(), env, &limits()) else {
            return;
        };
        let record = Record::new(
            Arc::from("fuzz"),
            1,
            42,
            Some(1_732_690_000_000),
            Some("k1".into()),
            bytes::Bytes::copy_from_slice(value),
        )
        .with_headers(vec![("source".into(), Some("web".into()))]);
        if let Ok(Some(out)) = shape.render(&record, env, &mut None, &mut None) {
            if let Err(e) = serde_json::from_slice::<IgnoredAny>(&out) {
                panic!("rendered output is not JSON ({e}): {out:?}");
            }
        }
    });
}
