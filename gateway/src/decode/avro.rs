//! Avro binary to JSON text, in one pass driven by a compiled [`Plan`]: no intermediate value
//! tree. Input: one Avro datum (no framing); output: JSON text appended to a buffer, following
//! the mapping in DESIGN.md (unions unwrapped, decimals as strings with `scale` digits,
//! bytes/fixed as padded base64, logical times as the encoded integers, NaN/±Infinity as
//! strings).

use base64::Engine as _;

use super::schema::{Node, Plan};

/// Why a datum could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroError {
    /// The data ended before the schema said it would.
    #[error("truncated Avro data")]
    Truncated,
    /// The data does not fit the schema.
    #[error("invalid Avro data: {0}")]
    Invalid(&'static str),
    /// The datum was read and bytes were left over.
    #[error("{0} bytes left after the Avro datum")]
    Trailing(usize),
}

/// Nesting deeper than this (recursive schemas) is refused rather than risking the stack.
const MAX_DEPTH: u32 = 128;
/// A block of zero-byte items (nulls, empty records) may not claim more than this many.
const MAX_EMPTY_ITEMS: u64 = 1 << 16;

/// Appends the JSON text of the Avro datum `data` (schema `plan`) to `out`. On error `out` may
/// hold a partial value; the caller discards it.
pub fn to_json(plan: &Plan, data: &[u8], out: &mut Vec<u8>) -> Result<(), AvroError> {
    let mut r = AvroCursor { data, pos: 0 };
    r.value(plan, plan.root, out, 0)?;
    match data.len() - r.pos {
        0 => Ok(()),
        n => Err(AvroError::Trailing(n)),
    }
}

/// A cursor over one Avro datum; also used by the sink's Arrow decoder
/// ([`crate::sink::avro_to_arrow`]), which reads the same binary encoding into Arrow builders.
pub(crate) struct AvroCursor<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> AvroCursor<'a> {
    #[inline]
    pub(crate) fn long(&mut self) -> Result<i64, AvroError> {
        let mut value: u64 = 0;
        let mut shift = 0;
        loop {
            let Some(&b) = self.data.get(self.pos) else {
                return Err(AvroError::Truncated);
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
            shift += 7;
            if shift > 63 {
                return Err(AvroError::Invalid("varint longer than 10 bytes"));
            }
        }
    }

    #[inline]
    pub(crate) fn int(&mut self) -> Result<i32, AvroError> {
        i32::try_from(self.long()?).map_err(|_| AvroError::Invalid("int out of range"))
    }

    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], AvroError> {
        let end = self.pos.checked_add(n).ok_or(AvroError::Truncated)?;
        let s = self.data.get(self.pos..end).ok_or(AvroError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    #[inline]
    pub(crate) fn len_prefixed(&mut self) -> Result<&'a [u8], AvroError> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| AvroError::Invalid("negative length"))?;
        self.take(n)
    }

    #[inline]
    pub(crate) fn string(&mut self) -> Result<&'a str, AvroError> {
        std::str::from_utf8(self.len_prefixed()?)
            .map_err(|_| AvroError::Invalid("string is not UTF-8"))
    }

    /// The item count of the next array/map block (0 at the end), skipping the block size.
    fn block(&mut self, item: &Node) -> Result<u64, AvroError> {
        self.block_len(may_be_empty(item))
    }

    /// The item count of the next array/map block (0 at the end), skipping the block size;
    /// `empty_items` says whether an item may take zero bytes (then a count larger than the
    /// bytes left is allowed, up to a bound).
    pub(crate) fn block_len(&mut self, empty_items: bool) -> Result<u64, AvroError> {
        let n = self.long()?;
        let count = if n < 0 {
            self.long()?; // the block's byte size, for readers that skip
            n.unsigned_abs()
        } else {
            n as u64
        };
        let left = (self.data.len() - self.pos) as u64;
        if count > left && !(empty_items && count <= MAX_EMPTY_ITEMS) {
            return Err(AvroError::Truncated);
        }
        Ok(count)
    }

    /// Reads the blocks of an array or map, calling `each` per item, with commas between.
    fn blocks(
        &mut self,
        item: &Node,
        out: &mut Vec<u8>,
        mut each: impl FnMut(&mut Self, &mut Vec<u8>) -> Result<(), AvroError>,
    ) -> Result<(), AvroError> {
        let mut first = true;
        loop {
            let count = self.block(item)?;
            if count == 0 {
                return Ok(());
            }
            for _ in 0..count {
                if !first {
                    out.push(b',');
                }
                first = false;
                each(self, out)?;
            }
        }
    }

    fn value(
        &mut self,
        plan: &Plan,
        node: usize,
        out: &mut Vec<u8>,
        depth: u32,
    ) -> Result<(), AvroError> {
        if depth > MAX_DEPTH {
            return Err(AvroError::Invalid("nesting too deep"));
        }
        let Some(n) = plan.nodes.get(node) else {
            return Err(AvroError::Invalid("schema plan is broken"));
        };
        match n {
            Node::Null => out.extend_from_slice(b"null"),
            Node::Boolean => match self.take(1)?[0] {
                0 => out.extend_from_slice(b"false"),
                1 => out.extend_from_slice(b"true"),
                _ => return Err(AvroError::Invalid("boolean is not 0 or 1")),
            },
            Node::Int => {
                let v = self.int()?;
                out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            }
            Node::Long => {
                let v = self.long()?;
                out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            }
            Node::Float => {
                let b = self.take(4)?;
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if v.is_finite() {
                    out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
                } else {
                    non_finite(f64::from(v), out);
                }
            }
            Node::Double => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let v = f64::from_le_bytes(a);
                if v.is_finite() {
                    out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
                } else {
                    non_finite(v, out);
                }
            }
            Node::Bytes => {
                let b = self.len_prefixed()?;
                base64(b, out);
            }
            Node::Fixed(size) => {
                let b = self.take(*size)?;
                base64(b, out);
            }
            Node::String => {
                let s = self.string()?;
                // serde_json's escaper: quotes, backslash, control characters; the rest as UTF-8.
                let _ = serde_json::to_writer(&mut *out, s);
            }
            Node::UuidFixed => {
                let b = self.take(16)?;
                uuid(b, out);
            }
            Node::Enum(symbols) => {
                let i = self.int()?;
                let Some(s) = usize::try_from(i).ok().and_then(|i| symbols.get(i)) else {
                    return Err(AvroError::Invalid("enum index out of range"));
                };
                out.extend_from_slice(s);
            }
            Node::Union(branches) => {
                let i = self.long()?;
                let Some(&b) = usize::try_from(i).ok().and_then(|i| branches.get(i)) else {
                    return Err(AvroError::Invalid("union branch index out of range"));
                };
                self.value(plan, b, out, depth + 1)?;
            }
            Node::Record(fields) => {
                out.push(b'{');
                for (key, f) in fields.iter() {
                    out.extend_from_slice(key);
                    self.value(plan, *f, out, depth + 1)?;
                }
                out.push(b'}');
            }
            Node::Array(item) => {
                out.push(b'[');
                let item_node = plan.nodes.get(*item).unwrap_or(&Node::Null);
                self.blocks(item_node, out, |r, out| {
                    r.value(plan, *item, out, depth + 1)
                })?;
                out.push(b']');
            }
            Node::Map(value) => {
                out.push(b'{');
                // Every entry has at least its key's length byte.
                self.blocks(&Node::Int, out, |r, out| {
                    let k = r.string()?;
                    let _ = serde_json::to_writer(&mut *out, k);
                    out.push(b':');
                    r.value(plan, *value, out, depth + 1)
                })?;
                out.push(b'}');
            }
            Node::Decimal { scale, size } => {
                let b = match size {
                    Some(n) => self.take(*n)?,
                    None => self.len_prefixed()?,
                };
                decimal(b, *scale, out);
            }
        }
        Ok(())
    }
}

/// Appends the JSON text of a value that `apache-avro` decoded (and resolved) to `out`,
/// following the same mapping, with the reader schema's `plan`. Used for topics with a reader
/// schema only; the direct path is [`to_json`].
pub fn value_to_json(
    plan: &Plan,
    node: usize,
    value: &apache_avro::types::Value,
    out: &mut Vec<u8>,
) -> Result<(), AvroError> {
    use apache_avro::types::Value as V;
    let mismatch = || AvroError::Invalid("resolved value does not fit the reader schema");
    let n = plan.nodes.get(node).ok_or_else(mismatch)?;
    let int =
        |v: i64, out: &mut Vec<u8>| out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    match (n, value) {
        (Node::Null, V::Null) => out.extend_from_slice(b"null"),
        (Node::Boolean, V::Boolean(b)) => {
            out.extend_from_slice(if *b { b"true" } else { b"false" });
        }
        (Node::Int, V::Int(v) | V::Date(v) | V::TimeMillis(v)) => int(i64::from(*v), out),
        (
            Node::Long,
            V::Long(v)
            | V::TimeMicros(v)
            | V::TimestampMillis(v)
            | V::TimestampMicros(v)
            | V::TimestampNanos(v)
            | V::LocalTimestampMillis(v)
            | V::LocalTimestampMicros(v)
            | V::LocalTimestampNanos(v),
        ) => int(*v, out),
        (Node::Float, V::Float(v)) if v.is_finite() => {
            out.extend_from_slice(ryu::Buffer::new().format_finite(*v).as_bytes());
        }
        (Node::Float, V::Float(v)) => non_finite(f64::from(*v), out),
        (Node::Double, V::Double(v)) if v.is_finite() => {
            out.extend_from_slice(ryu::Buffer::new().format_finite(*v).as_bytes());
        }
        (Node::Double, V::Double(v)) => non_finite(*v, out),
        (Node::Bytes | Node::Fixed(_), V::Bytes(b) | V::Fixed(_, b)) => base64(b, out),
        (Node::Fixed(_), V::Duration(d)) => base64(&<[u8; 12]>::from(*d), out),
        (Node::String, V::String(s)) => {
            let _ = serde_json::to_writer(&mut *out, s);
        }
        (Node::String | Node::UuidFixed, V::Uuid(u)) => {
            out.push(b'"');
            out.extend_from_slice(u.hyphenated().to_string().as_bytes());
            out.push(b'"');
        }
        (Node::UuidFixed, V::Fixed(16, b)) => uuid(b, out),
        (Node::Enum(symbols), V::Enum(i, _)) => {
            let s = symbols.get(*i as usize).ok_or_else(mismatch)?;
            out.extend_from_slice(s);
        }
        (Node::Union(branches), V::Union(i, v)) => {
            let b = branches.get(*i as usize).ok_or_else(mismatch)?;
            value_to_json(plan, *b, v, out)?;
        }
        (Node::Record(fields), V::Record(values)) if fields.len() == values.len() => {
            out.push(b'{');
            for ((key, f), (_, v)) in fields.iter().zip(values) {
                out.extend_from_slice(key);
                value_to_json(plan, *f, v, out)?;
            }
            out.push(b'}');
        }
        (Node::Array(item), V::Array(items)) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                value_to_json(plan, *item, v, out)?;
            }
            out.push(b']');
        }
        (Node::Map(item), V::Map(entries)) => {
            out.push(b'{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                value_to_json(plan, *item, v, out)?;
            }
            out.push(b'}');
        }
        (Node::Decimal { scale, .. }, V::Decimal(d)) => {
            let bytes = num_bigint::BigInt::from(d.clone()).to_signed_bytes_be();
            decimal(&bytes, *scale, out);
        }
        // The resolution schema has no decimal annotation (see `ParsedSchema::avro`).
        (Node::Decimal { scale, .. }, V::Bytes(b) | V::Fixed(_, b)) => decimal(b, *scale, out),
        _ => return Err(mismatch()),
    }
    Ok(())
}

/// True when a value of this node may take no bytes at all.
fn may_be_empty(node: &Node) -> bool {
    match node {
        Node::Null | Node::Record(_) | Node::Union(_) => true,
        Node::Fixed(n) | Node::Decimal { size: Some(n), .. } => *n == 0,
        _ => false,
    }
}

fn non_finite(v: f64, out: &mut Vec<u8>) {
    out.extend_from_slice(if v.is_nan() {
        b"\"NaN\""
    } else if v > 0.0 {
        b"\"Infinity\""
    } else {
        b"\"-Infinity\""
    });
}

/// `"<base64>"`, RFC 4648 with padding.
fn base64(b: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let start = out.len();
    let n = b.len().div_ceil(3) * 4;
    out.resize(start + n, 0);
    // The slice has exactly the encoded length, so this cannot fail.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(b, &mut out[start..]);
    out.push(b'"');
}

fn uuid(b: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX[usize::from(byte >> 4)]);
        out.push(HEX[usize::from(byte & 0xf)]);
    }
    out.push(b'"');
}

/// A two's-complement big-endian unscaled integer as a decimal string with `scale` digits after
/// the point.
fn decimal(b: &[u8], scale: u32, out: &mut Vec<u8>) {
    let (negative, digits) = if b.len() <= 16 {
        let mut v: i128 = if b.first().is_some_and(|&x| x & 0x80 != 0) {
            -1
        } else {
            0
        };
        for &x in b {
            v = (v << 8) | i128::from(x);
        }
        (
            v < 0,
            itoa::Buffer::new().format(v.unsigned_abs()).to_string(),
        )
    } else {
        let v = num_bigint::BigInt::from_signed_bytes_be(b);
        (
            v.sign() == num_bigint::Sign::Minus,
            v.magnitude().to_string(),
        )
    };
    out.push(b'"');
    if negative {
        out.push(b'-');
    }
    let scale = scale as usize;
    if scale == 0 {
        out.extend_from_slice(digits.as_bytes());
    } else {
        let pad = (scale + 1).saturating_sub(digits.len());
        let mut all = Vec::with_capacity(pad + digits.len());
        all.resize(pad, b'0');
        all.extend_from_slice(digits.as_bytes());
        let point = all.len() - scale;
        out.extend_from_slice(&all[..point]);
        out.push(b'.');
        out.extend_from_slice(&all[point..]);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::super::schema::ParsedSchema;
    use super::*;
    use apache_avro::types::Value as AV;

    fn json(schema: &str, value: AV) -> anyhow::Result<String> {
        let parsed = ParsedSchema::parse(schema)?;
        let data = apache_avro::to_avro_datum(&parsed.avro, value)?;
        let mut out = Vec::new();
        to_json(&parsed.plan, &data, &mut out)?;
        Ok(String::from_utf8(out)?)
    }

    #[test]
    fn primitives_and_specials() -> anyhow::Result<()> {
        assert_eq!(json(r#""double""#, AV::Double(f64::NAN))?, r#""NaN""#);
        assert_eq!(
            json(r#""double""#, AV::Double(f64::INFINITY))?,
            r#""Infinity""#
        );
        assert_eq!(
            json(r#""float""#, AV::Float(f32::NEG_INFINITY))?,
            r#""-Infinity""#
        );
        assert_eq!(json(r#""float""#, AV::Float(1.1))?, "1.1");
        assert_eq!(json(r#""double""#, AV::Double(-0.5))?, "-0.5");
        assert_eq!(json(r#""long""#, AV::Long(i64::MIN))?, i64::MIN.to_string());
        assert_eq!(
            json(r#""bytes""#, AV::Bytes(vec![0xff, 0, 1, 2]))?,
            r#""/wABAg==""#
        );
        assert_eq!(
            json(r#""string""#, AV::String("a\"\\\n\u{1}é😀".into()))?,
            r#""a\"\\\n\u0001é😀""#
        );
        Ok(())
    }

    #[test]
    fn decimals_have_exactly_scale_digits() {
        let cases: &[(&[u8], u32, &str)] = &[
            (&[0x01, 0x2d, 0x8d], 4, r#""7.7197""#),
            (&[0xff], 2, r#""-0.01""#),
            (&[], 3, r#""0.000""#),
            (&[0x30, 0x39], 0, r#""12345""#),
            (
                &[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                1,
                r#""-4355614296588012332331194975126633106636.8""#,
            ),
        ];
        for (bytes, scale, want) in cases {
            let mut out = Vec::new();
            decimal(bytes, *scale, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                *want,
                "{bytes:?} scale {scale}"
            );
        }
    }

    #[test]
    fn bad_data_is_an_error_never_a_panic() -> anyhow::Result<()> {
        let p = ParsedSchema::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},
               {"name":"b","type":{"type":"array","items":"null"}},
               {"name":"e","type":{"type":"enum","name":"E","symbols":["X"]}}]}"#,
        )?;
        let mut out = Vec::new();
        assert_eq!(
            to_json(&p.plan, &[0x06, b'a'], &mut out),
            Err(AvroError::Truncated)
        );
        // A huge array of nulls is refused, not looped over.
        assert!(to_json(&p.plan, &[0x00, 0xfe, 0xff, 0xff, 0xff, 0x0f], &mut out).is_err());
        assert_eq!(
            to_json(&p.plan, &[0x00, 0x00, 0x02], &mut out),
            Err(AvroError::Invalid("enum index out of range"))
        );
        assert_eq!(
            to_json(&p.plan, &[0x00, 0x00, 0x00, 0x00], &mut out),
            Err(AvroError::Trailing(1))
        );
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ n).collect();
            let _ = to_json(&p.plan, &junk, &mut out);
        }
        Ok(())
    }
}
