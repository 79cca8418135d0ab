//! Protobuf values of `format = "confluent"` topics. Input: the registry's `.proto` text and its
//! references (compiled once per schema id with `protox`, the well-known `google/protobuf/*`
//! types included), then records: after the 5-byte Confluent header, the message-index list
//! (a zig-zag varint count, then that many zig-zag varint indexes; a count of 0 means `[0]`, the
//! file's first message) that picks the message type, then the Protobuf bytes. Output: the
//! message as JSON, by the proto3 JSON mapping with the .proto's own field names
//! ([`JSON_OPTIONS`]): what Confluent's tools print with "preserving proto field names" and
//! "including default value fields".

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, DynamicMessage, FileDescriptor, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use super::DecodeError;

/// At most this many message indexes: a real file nests messages a few levels deep.
pub const MAX_MESSAGE_INDEXES: usize = 64;

/// How messages are written as JSON: the proto3 JSON mapping (64-bit integers as strings, enums
/// by name, bytes as base64, `Timestamp` as RFC 3339 text, ...), fields named as in the .proto
/// (not lowerCamelCase), and fields without presence written even when they hold their default
/// (a message field, an `optional` or a oneof member not set is left out).
pub const JSON_OPTIONS: prost_reflect::SerializeOptions = prost_reflect::SerializeOptions::new()
    .use_proto_field_name(true)
    .skip_default_fields(false);

/// A registry Protobuf schema, compiled.
pub struct ProtoSchema {
    file: FileDescriptor,
}

impl std::fmt::Debug for ProtoSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtoSchema")
            .field("file", &self.file.name())
            .finish()
    }
}

/// The registry's texts by import name, then the well-known types.
struct Sources(HashMap<String, String>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(text) => File::from_source(name, text),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

impl ProtoSchema {
    /// Compiles schema `id`'s `.proto` text, its `references` (import name, text) resolving its
    /// imports; why it cannot be used otherwise.
    pub fn compile(id: u32, text: &str, references: &[(String, String)]) -> Result<Self, String> {
        let main = format!("lakewire-registry-schema-{id}.proto");
        let mut files: HashMap<String, String> = references.iter().cloned().collect();
        files.insert(main.clone(), text.to_string());
        let mut resolver = ChainFileResolver::new();
        resolver.add(Sources(files));
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler
            .open_file(&main)
            .map_err(|e| format!("schema {id}: the Protobuf schema does not compile: {e}"))?;
        let pool: DescriptorPool = compiler.descriptor_pool();
        let file = pool
            .get_file_by_name(&main)
            .ok_or_else(|| format!("schema {id}: the compiled Protobuf schema is missing"))?;
        Ok(Self { file })
    }

    /// The message type that `indexes` pick: the file's top-level message `indexes[0]`, then
    /// its nested message `indexes[1]`, and so on.
    fn message(&self, indexes: &[u64]) -> Result<MessageDescriptor, DecodeError> {
        let out_of_range = |depth: usize, i: u64| {
            DecodeError::BadMessageIndex(format!(
                "message index {i} (depth {depth} of {indexes:?}) is out of range"
            ))
        };
        let Some((first, rest)) = indexes.split_first() else {
            return Err(DecodeError::BadMessageIndex("no message index".into()));
        };
        let nth = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let mut message = self
            .file
            .messages()
            .nth(nth(*first))
            .ok_or_else(|| out_of_range(0, *first))?;
        for (depth, &i) in rest.iter().enumerate() {
            let child = message.child_messages().nth(nth(i));
            message = child.ok_or_else(|| out_of_range(depth + 1, i))?;
        }
        Ok(message)
    }
}

/// One zig-zag varint from the front of `b`.
fn zigzag(b: &mut &[u8]) -> Result<i64, DecodeError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some((&byte, rest)) = b.split_first() else {
            return Err(DecodeError::Truncated(
                "the Protobuf message indexes end early",
            ));
        };
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    Err(DecodeError::BadMessageIndex(
        "a message index varint is longer than 10 bytes".into(),
    ))
}

/// The message-index list at the front of `b` (after the Confluent header); `b` is left at the
/// Protobuf bytes.
pub fn message_indexes(b: &mut &[u8]) -> Result<Vec<u64>, DecodeError> {
    let count = zigzag(b)?;
    if count == 0 {
        return Ok(vec![0]);
    }
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= MAX_MESSAGE_INDEXES)
        .ok_or_else(|| {
            DecodeError::BadMessageIndex(format!(
                "{count} message indexes (at most {MAX_MESSAGE_INDEXES})"
            ))
        })?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let i = zigzag(b)?;
        out.push(
            u64::try_from(i)
                .map_err(|_| DecodeError::BadMessageIndex(format!("message index {i} < 0")))?,
        );
    }
    Ok(out)
}

/// The JSON of a Protobuf value: `data` is what follows the Confluent header.
pub fn to_json(
    schema: &ProtoSchema,
    mut data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let indexes = message_indexes(&mut data)?;
    let desc = schema.message(&indexes)?;
    let message =
        DynamicMessage::decode(desc, data).map_err(|e| DecodeError::BadProtobuf(e.to_string()))?;
    let mut ser = serde_json::Serializer::new(out);
    message
        .serialize_with_options(&mut ser, &JSON_OPTIONS)
        .map_err(|e| DecodeError::BadProtobuf(format!("cannot write it as JSON: {e}")))
}
