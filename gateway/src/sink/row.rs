//! What the sink worker decodes of one record before it writes it: the value's writer schema and
//! Avro datum, and, for tables that ask for them, the key as text and the headers. Input: the
//! record and its table; output: a [`Row`], or why it cannot be written now ([`Unwritten`]:
//! wait and read it again, or skip it as bad).
//!
//! A schema id the registry does not know (yet) is asked for again, for a bounded time, before
//! the record is given up on for now: the registry may have learnt it since it was cached as
//! unknown.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{BorrowedHeaders, Headers};

use super::worker::ConfiguredTable;
use crate::decode::schema::ParsedSchema;
use crate::decode::{DecodeError, Decoder};
use crate::record::RawRecord;

/// How long the worker waits for the registry on one record before it pauses the partition
/// and goes on polling (the others keep flowing; the group keeps it).
const REGISTRY_WAIT: Duration = Duration::from_secs(2);

/// One record, decoded as far as the sink needs.
pub(super) struct Row<'b> {
    pub(super) schema: Arc<ParsedSchema>,
    /// The value's Avro datum (after its framing).
    pub(super) datum: &'b [u8],
    /// The key as text, when the table has a `_key` column.
    pub(super) key: Option<String>,
    /// The headers, when the table has a `_headers` column.
    pub(super) headers: Vec<(&'b str, Option<&'b [u8]>)>,
}

/// Why a record is not written now.
pub(super) enum Unwritten {
    /// It may decode later (a schema not in the registry yet, a registry that does not
    /// answer): the reason label of `lakewire_sink_decode_waits_total`.
    Wait(&'static str),
    /// It never will.
    Bad(DecodeError),
}

/// Decodes what the sink writes of `raw` (whose payload is `payload`) for table `t`; `headers`
/// are the record's headers when the table writes them (the caller reads them only then).
pub(super) fn row<'b>(
    rt: &tokio::runtime::Handle,
    t: &ConfiguredTable,
    raw: &RawRecord<'b>,
    payload: &'b [u8],
    headers: Option<&'b BorrowedHeaders>,
) -> Result<Row<'b>, Unwritten> {
    let (schema, datum) = asking_again(rt, &t.decoder, raw, |d| d.value_writer(payload))?;
    let key = if t.key_column {
        asking_again(rt, &t.decoder, raw, |d| d.key_text(raw))?
    } else {
        None
    };
    let headers = headers
        .map(|hs| hs.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default();
    Ok(Row {
        schema,
        datum,
        key,
        headers,
    })
}

/// `decode`, and once more after asking the registry again when it names a schema id the
/// registry did not know.
fn asking_again<T>(
    rt: &tokio::runtime::Handle,
    decoder: &Decoder,
    raw: &RawRecord<'_>,
    decode: impl Fn(&Decoder) -> Result<T, DecodeError>,
) -> Result<T, Unwritten> {
    let first = decode(decoder);
    let result = match first {
        Err(e) if unknown_id(&e) => {
            // (The timer is made inside the runtime: this thread is not one of its own.)
            let asked = rt.block_on(async {
                tokio::time::timeout(REGISTRY_WAIT, decoder.refetch(raw)).await
            });
            match asked {
                Ok(()) => decode(decoder),
                Err(_) => return Err(Unwritten::Wait("registry_unavailable")),
            }
        }
        other => other,
    };
    result.map_err(|e| match retryable(&e) {
        Some(reason) => Unwritten::Wait(reason),
        None => Unwritten::Bad(e),
    })
}

fn unknown_id(e: &DecodeError) -> bool {
    match e {
        DecodeError::UnknownSchemaId(_) => true,
        DecodeError::Key(inner) => unknown_id(inner),
        _ => false,
    }
}

/// The wait reason of an error that can pass; `None` for one that cannot. A value whose registry
/// schema is not Avro (Protobuf, JSON Schema: the sink does not write them) is a wait too, not a
/// skip: the partition pauses on it and nothing past it is committed, so it is not lost.
fn retryable(e: &DecodeError) -> Option<&'static str> {
    match e {
        DecodeError::UnknownSchemaId(_)
        | DecodeError::UnknownFingerprint(_)
        | DecodeError::NotAvro { .. } => Some(e.reason()),
        DecodeError::Key(inner) => retryable(inner),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Protobuf or JSON-Schema value in a sink topic waits (the partition pauses, nothing past
    /// it is committed) rather than being skipped: it is not lost.
    #[test]
    fn a_value_that_is_not_avro_is_waited_on_not_skipped() {
        let e = DecodeError::NotAvro {
            id: 7,
            schema_type: "PROTOBUF",
        };
        assert_eq!(retryable(&e), Some("not_avro"));
        assert_eq!(retryable(&DecodeError::Key(Box::new(e))), Some("not_avro"));
        assert_eq!(
            retryable(&DecodeError::BadProtobuf("x".into())),
            None,
            "a bad record is still skipped"
        );
    }
}
