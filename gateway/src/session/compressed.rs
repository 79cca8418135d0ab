//! A `records` frame compressed (permessage-deflate): the subscription's prefix segment, then
//! each run of its records — a whole hub chunk as the chunk's shared segment, compressed once for
//! every subscription of the shape; anything else (part of a chunk, after a `lagged` drop or at a
//! frame limit, and replayed records) compressed here — and the closing `]}`.

use std::sync::Arc;

use tungstenite::Message;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::deflate::{self, Chunk, Segment};
use crate::hub::Delivery;

/// One run of a frame's records.
enum Run<'a> {
    /// A whole chunk, in order.
    Whole(&'a Arc<Chunk>),
    /// Records compressed for this frame alone.
    Own(Vec<&'a [u8]>),
}

/// The compressed `records` frame of `deliveries` (one subscription's, in order).
pub(super) fn records(prefix: &Segment, deliveries: &[&Delivery]) -> Message {
    let mut runs: Vec<Run<'_>> = Vec::new();
    let mut i = 0;
    while i < deliveries.len() {
        if let Some(chunk) = whole_chunk_at(&deliveries[i..]) {
            runs.push(Run::Whole(chunk));
            i += chunk.len();
            continue;
        }
        let record = &deliveries[i].bytes[..];
        match runs.last_mut() {
            Some(Run::Own(records)) => records.push(record),
            _ => runs.push(Run::Own(vec![record])),
        }
        i += 1;
    }
    let own: Vec<Option<Segment>> = runs
        .iter()
        .enumerate()
        .map(|(n, run)| match run {
            Run::Own(records) => Some(Segment::of(&deflate::joined(records, n > 0))),
            Run::Whole(_) => None,
        })
        .collect();
    let mut segments: Vec<&Segment> = Vec::with_capacity(runs.len() + 2);
    segments.push(prefix);
    for (n, (run, own)) in runs.iter().zip(&own).enumerate() {
        match (run, own) {
            (_, Some(segment)) => segments.push(segment),
            (Run::Whole(chunk), None) => segments.push(chunk.segment(n > 0)),
            (Run::Own(_), None) => {}
        }
    }
    segments.push(deflate::records_suffix());
    let header = FrameHeader {
        is_final: true,
        rsv1: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    Message::Frame(Frame::from_payload(header, deflate::message(&segments)))
}

/// The chunk `deliveries` start with, when they start with all of it in order.
fn whole_chunk_at<'a>(deliveries: &[&'a Delivery]) -> Option<&'a Arc<Chunk>> {
    let first = deliveries.first()?.chunk.as_ref()?;
    let chunk = &first.chunk;
    if first.index != 0 || deliveries.len() < chunk.len() || chunk.is_empty() {
        return None;
    }
    let whole = deliveries[..chunk.len()].iter().enumerate().all(|(i, d)| {
        d.chunk
            .as_ref()
            .is_some_and(|at| Arc::ptr_eq(&at.chunk, chunk) && at.index as usize == i)
    });
    whole.then_some(chunk)
}
