//! Closing an open file of the sink worker: its Arrow batches encoded to Parquet with the
//! partition's resume mark in the footer, put in place (retried), counted, and queued for the
//! metastore. Input: an [`OpenFile`] and its table; output: the [`Landed`] file, or why not.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::encode_with;
use super::hive_paths::{FileName, hive_dir};
use super::partition::OpenFile;
use super::register::Pending;
use super::resume::{Holds, Landed, Marks};
use super::worker::{ConfiguredTable, WorkerContext};

/// How long landing a file is retried before the partition is rewound to the file's start
/// (staying well inside the consumer's `max.poll.interval.ms`).
const LAND_RETRY_FOR: Duration = Duration::from_secs(30);

/// Encodes `open`, with `mark` as its resume mark, and puts it in place (retrying for
/// [`LAND_RETRY_FOR`]); what is now in place (`None`: no rows, nothing written).
pub(super) fn land(
    ctx: &WorkerContext,
    t: &ConfiguredTable,
    p: i32,
    open: &mut OpenFile,
    mark: i64,
) -> Result<Option<Landed>, String> {
    let batches = open.batch.finish().map_err(|e| e.to_string())?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 {
        // Only refused records: nothing to write.
        return Ok(None);
    }
    let schema = open.batch.schema().clone();
    let key_values = Marks::key_values(mark, open.fingerprint);
    let bytes = Bytes::from(
        encode_with(&batches, &schema, ctx.compression, key_values).map_err(|e| e.to_string())?,
    );
    let name = FileName {
        topic: t.topic.to_string(),
        partition: p,
        start: open.start,
        end: open.end,
    }
    .render();
    let part_dir = hive_dir(&t.partition_by, &open.values);
    let dir = if part_dir.is_empty() {
        t.name.clone()
    } else {
        format!("{}/{part_dir}", t.name)
    };
    let began = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match ctx
            .rt
            .block_on(ctx.storage.land(&dir, &name, bytes.clone()))
        {
            Ok(()) => break,
            Err(e) => {
                ctx.metrics.sink_storage_errors.inc();
                tracing::warn!(file = %format!("{dir}/{name}"), error = %e, "sink: cannot write the file; retrying");
                if ctx.cancel.is_cancelled() || began.elapsed() >= LAND_RETRY_FOR {
                    return Err(e.to_string());
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    t.records.inc_by(rows as u64);
    t.files.inc();
    t.bytes.inc_by(bytes.len() as u64);
    ctx.metrics.sink_file_bytes.observe(bytes.len() as f64);
    ctx.metrics
        .sink_visibility_seconds
        .observe(open.opened.elapsed().as_secs_f64());
    tracing::debug!(topic = %t.topic, partition = p, start = open.start, end = open.end, bytes = bytes.len(), dir = %part_dir, mark, "sink: file in place");
    if let Some(r) = &ctx.registrar {
        r.add(Pending {
            table: t.name.clone(),
            dir: part_dir.clone(),
            schema: Some(schema),
            sample: None,
        });
    }
    Ok(Some(Landed {
        dir: part_dir,
        holds: Holds::Schema(open.fingerprint),
        start: open.start,
        end: open.end,
    }))
}
