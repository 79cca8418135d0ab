//! The SSE request parser (`sse::request`, `sse::parse_position`). Input: the query string
//! (`topic=..&from=..`, already URL-decoded), then optionally a newline and a `Last-Event-ID`.
//! Properties: no panic; a position that parses formats back to itself.
#![no_main]

use std::collections::HashMap;

use lakewire::sse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (query, last_event_id) = match text.split_once('\n') {
        Some((q, id)) => (q, Some(id)),
        None => (text, None),
    };
    let query: HashMap<String, String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    let _ = sse::request(&query, last_event_id);
    if let Some(id) = last_event_id {
        if let Ok(position) = sse::parse_position(id) {
            let again = sse::format_position(&position);
            assert_eq!(
                sse::parse_position(&again).as_ref(),
                Ok(&position),
                "{id:?} -> {again:?}"
            );
        }
    }
});
