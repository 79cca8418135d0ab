//! WebSocket per-message compression (RFC 7692, `permessage-deflate`): what the gateway agrees
//! to in the handshake ([`negotiate`]), how outgoing messages are compressed so that one
//! compression serves every client of a shape ([`Segment`]), and how compressed client frames
//! are inflated under the message size limit ([`Inflating`]). The deflate stream itself is
//! `flate2`'s (zlib-rs); tungstenite frames the messages.
//!
//! Only one parameter set is ever agreed: `server_no_context_takeover` (each server message is
//! compressed on its own, so the same bytes can go to many clients) and
//! `client_no_context_takeover` (each client message inflates on its own, so no inflate window
//! is kept while a connection is idle), both with 15-bit windows. RFC 7692 §7.1.1.2 lets a server
//! ask for the latter even when the client did not offer it.
//!
//! A message is compressed as a sequence of [`Segment`]s, each one a deflate stream of its own
//! bytes ended by a sync flush: a deflate decoder reads them one after another as one stream,
//! since a segment's back-references stay inside itself. The `records` frame of a subscription
//! is its prefix segment (compressed once per subscription), the shape's records of each hub
//! batch (compressed once for all subscriptions of the shape, [`Chunk`]) and the closing `]}`.

pub mod client;
mod inflate;
mod negotiate;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::sync::{Arc, LazyLock, OnceLock};

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress};

pub use inflate::{BadDeflate, Inflating};
pub use negotiate::{RESPONSE, negotiate};

/// The empty stored block a sync flush ends with; RFC 7692 §7.2.1 drops it from the end of a
/// message, and the receiver adds it back.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The compression level of outgoing messages (zlib's 1: fastest, and JSON still shrinks several
/// times; the work is per shape, not per client).
const LEVEL: u32 = 1;

thread_local! {
    /// One compressor per thread, reset for each segment (a compressor's state is ~256 KiB; no
    /// connection holds one).
    static COMPRESSOR: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// Bytes compressed on their own, ending with a sync flush: can be followed by any other
/// segment in the same message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment(Bytes);

impl Segment {
    /// Compresses the concatenation of `parts`.
    pub fn of(parts: &[&[u8]]) -> Segment {
        COMPRESSOR.with(|c| {
            let mut slot = c.borrow_mut();
            let compress =
                slot.get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
            compress.reset();
            let input: usize = parts.iter().map(|p| p.len()).sum();
            let mut out = Vec::with_capacity(input / 2 + 64);
            for part in parts {
                deflate(compress, part, &mut out, FlushCompress::None);
            }
            deflate(compress, &[], &mut out, FlushCompress::Sync);
            Segment(Bytes::from(out))
        })
    }

    /// The compressed bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Runs `compress` over all of `input`; with a sync flush, until the flush is out (zlib has
/// finished it when it left room in the output).
fn deflate(compress: &mut Compress, mut input: &[u8], out: &mut Vec<u8>, flush: FlushCompress) {
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        let before = compress.total_in();
        let status = compress.compress_vec(input, out, flush);
        let took = usize::try_from(compress.total_in() - before).unwrap_or(input.len());
        input = &input[took.min(input.len())..];
        // Compressing into a vector with room cannot fail; a stream error would be a bug in the
        // compressor, and the segment is then cut short (the client fails to inflate it and
        // closes) rather than the gateway panicking.
        if status.is_err() {
            return;
        }
        let done = match flush {
            FlushCompress::None => input.is_empty(),
            _ => out.len() < out.capacity(),
        };
        if done {
            return;
        }
    }
}

/// One compressed message: segments in order, the last sync tail dropped (RFC 7692 §7.2.1).
pub fn message(segments: &[&Segment]) -> Bytes {
    let len: usize = segments.iter().map(|s| s.0.len()).sum();
    let mut out = BytesMut::with_capacity(len);
    for s in segments {
        out.extend_from_slice(&s.0);
    }
    if out.ends_with(&SYNC_TAIL) {
        out.truncate(out.len() - SYNC_TAIL.len());
    }
    out.freeze()
}

/// The `]}` every `records` frame ends with.
pub fn records_suffix() -> &'static Segment {
    static SUFFIX: LazyLock<Segment> = LazyLock::new(|| Segment::of(&[b"]}"]));
    &SUFFIX
}

/// The records of one shape from one hub batch, shared by every subscription of the shape, with
/// their compressed forms made on first use: as the first records of a frame, and after others
/// (with the separating comma).
#[derive(Debug)]
pub struct Chunk {
    records: Vec<Bytes>,
    first: OnceLock<Segment>,
    after: OnceLock<Segment>,
}

impl Chunk {
    /// A chunk of `records`, in order.
    pub fn new(records: Vec<Bytes>) -> Arc<Chunk> {
        Arc::new(Chunk {
            records,
            first: OnceLock::new(),
            after: OnceLock::new(),
        })
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Its records, comma-separated and compressed; with a leading comma when `after_others`.
    pub fn segment(&self, after_others: bool) -> &Segment {
        let cell = if after_others {
            &self.after
        } else {
            &self.first
        };
        cell.get_or_init(|| Segment::of(&joined(&self.records, after_others)))
    }
}

/// `records` separated by commas (and led by one when `leading_comma`), as slices to compress.
pub fn joined<B: AsRef<[u8]>>(records: &[B], leading_comma: bool) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(records.len() * 2);
    for (i, r) in records.iter().enumerate() {
        if i > 0 || leading_comma {
            parts.push(&b","[..]);
        }
        parts.push(r.as_ref());
    }
    parts
}
