//! Avro schemas for the decode stage. Input: a schema's JSON text (a `.avsc` file or a registry
//! answer); output: a [`ParsedSchema`] holding the compiled [`Plan`] that the JSON writer in
//! [`super::avro`] follows, the schema's Parsing Canonical Form and its CRC-64-AVRO (Rabin)
//! fingerprint, and, for schema resolution, `apache-avro`'s own parse of it.
//!
//! The plan is compiled from the JSON here rather than from `apache_avro::Schema` because that
//! type folds `uuid` on `fixed(16)` into the string form and drops the difference the binary
//! encoding depends on; the canonical form is computed here for the same reason.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

/// A schema that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, SchemaError> {
    Err(SchemaError(msg.into()))
}

/// One step of a [`Plan`]: how to read one Avro value and write it as JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Boolean,
    /// `int`, and the int-based logical types (`date`, `time-millis`): the integer as encoded.
    Int,
    /// `long`, and the long-based logical types (timestamps, `time-micros`).
    Long,
    Float,
    Double,
    /// `bytes`: base64.
    Bytes,
    /// `string`, also with logical type `uuid`.
    String,
    /// `fixed` of this size: base64.
    Fixed(usize),
    /// `uuid` on `fixed(16)`: the canonical 8-4-4-4-12 hex text.
    UuidFixed,
    /// `enum`: each symbol already written as a JSON string.
    Enum(Box<[Box<[u8]>]>),
    /// `array` of the node at this index.
    Array(usize),
    /// `map` of the node at this index.
    Map(usize),
    /// `record`: per field, the JSON text `"name":` (with a leading `,` after the first) and the
    /// field's node.
    Record(Box<[(Box<[u8]>, usize)]>),
    /// `union`: the branches' nodes.
    Union(Box<[usize]>),
    /// `decimal` on `bytes` (`size` is `None`) or on `fixed(size)`.
    Decimal {
        scale: u32,
        size: Option<usize>,
    },
}

/// A schema compiled for decoding: nodes in an arena (named types may refer to themselves).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub nodes: Vec<Node>,
    pub root: usize,
}

/// One field of a record schema as a client names it: a dotted path from `value` and a short
/// type (`"long"`, `"string"`, `"enum"`, `"null|double"`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldInfo {
    pub path: String,
    #[serde(rename = "type")]
    pub ty: String,
}

/// The fields of a schema in Parsing Canonical Form, nested records flattened into dotted paths
/// (`value.ship_to.city`). Empty when the root is not a record.
pub fn field_paths(canonical: &str) -> Vec<FieldInfo> {
    fn short(t: &Value) -> String {
        match t {
            Value::String(s) => s.rsplit('.').next().unwrap_or(s).to_string(),
            Value::Array(branches) => branches.iter().map(short).collect::<Vec<_>>().join("|"),
            Value::Object(o) => o
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            _ => "?".into(),
        }
    }
    fn walk(prefix: &str, record: &Value, out: &mut Vec<FieldInfo>) {
        let Some(fields) = record.get("fields").and_then(Value::as_array) else {
            return;
        };
        for f in fields {
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                continue;
            };
            let path = format!("{prefix}.{name}");
            let ty = f.get("type").unwrap_or(&Value::Null);
            if ty.get("type").and_then(Value::as_str) == Some("record") {
                walk(&path, ty, out);
            } else {
                out.push(FieldInfo {
                    path,
                    ty: short(ty),
                });
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(json) = serde_json::from_str::<Value>(canonical) {
        walk("value", &json, &mut out);
    }
    out
}

/// A schema, parsed every way the decoder needs it.
#[derive(Debug)]
pub struct ParsedSchema {
    pub plan: Plan,
    /// Parsing Canonical Form.
    pub canonical: String,
    /// CRC-64-AVRO fingerprint of the canonical form.
    pub fingerprint: u64,
    /// The fingerprint the Python `avro` package (1.12) computes, when it differs: it writes a
    /// primitive carrying a logical type as `{"type":"long"}` instead of the specification's
    /// `"long"`. Single-object records from Python producers carry this one.
    pub python_fingerprint: Option<u64>,
    /// `apache-avro`'s parse, used for schema resolution (a reader schema per topic), with the
    /// `decimal` and `uuid` annotations removed: apache-avro 0.21 refuses to resolve a decimal
    /// whose bytes are shorter than its precision allows (as every writer encodes small values)
    /// and reads `uuid` on `fixed` as a string. The plan keeps the annotations.
    pub avro: apache_avro::Schema,
    /// The schema's JSON as given (logical types and all), for the sink's Arrow schema.
    pub json: Value,
}

impl ParsedSchema {
    /// Parses the JSON text of a schema.
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let json: Value =
            serde_json::from_str(text).map_err(|e| SchemaError(format!("not JSON: {e}")))?;
        let plan = Compiler::default().compile_root(&json)?;
        let canonical = canonical_form(&json)?;
        let fingerprint = rabin(canonical.as_bytes());
        let python_fingerprint =
            Some(rabin(canonical_form_as(&json, true)?.as_bytes())).filter(|&f| f != fingerprint);
        let avro = apache_avro::Schema::parse(&strip_annotations(json.clone()))
            .map_err(|e| SchemaError(format!("not a valid Avro schema: {e}")))?;
        Ok(Self {
            plan,
            canonical,
            fingerprint,
            python_fingerprint,
            avro,
            json,
        })
    }

    /// Reads and parses a `.avsc` file.
    pub fn from_file(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SchemaError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| SchemaError(format!("{}: {e}", path.display())))
    }
}

/// The schema without `decimal` and `uuid` logical types (their underlying types stay).
fn strip_annotations(mut json: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(obj) => {
                if matches!(
                    obj.get("logicalType").and_then(Value::as_str),
                    Some("decimal" | "uuid")
                ) {
                    obj.remove("logicalType");
                }
                obj.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut json);
    json
}

const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The full name of a named type: `name` if it has a dot, else `namespace.name`.
pub(crate) fn full_name(
    obj: &Map<String, Value>,
    enclosing: &str,
) -> Result<(String, String), SchemaError> {
    let Some(name) = obj.get("name").and_then(Value::as_str) else {
        return bad("a named type (record, enum, fixed) needs a string \"name\"");
    };
    if name.contains('.') {
        let ns = name.rsplit_once('.').map_or("", |(ns, _)| ns);
        return Ok((name.to_string(), ns.to_string()));
    }
    let ns = match obj.get("namespace") {
        Some(Value::String(ns)) => ns.as_str(),
        Some(Value::Null) | None => enclosing,
        Some(_) => return bad(format!("{name}: \"namespace\" must be a string")),
    };
    if ns.is_empty() {
        Ok((name.to_string(), String::new()))
    } else {
        Ok((format!("{ns}.{name}"), ns.to_string()))
    }
}

/// Compiles schema JSON into a [`Plan`].
#[derive(Default)]
struct Compiler {
    nodes: Vec<Node>,
    names: HashMap<String, usize>,
}

impl Compiler {
    fn compile_root(mut self, json: &Value) -> Result<Plan, SchemaError> {
        let root = self.compile(json, "")?;
        Ok(Plan {
            nodes: self.nodes,
            root,
        })
    }

    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn compile(&mut self, json: &Value, ns: &str) -> Result<usize, SchemaError> {
        match json {
            Value::String(name) => self.named_or_primitive(name, ns),
            Value::Array(branches) => {
                let mut idx = Vec::with_capacity(branches.len());
                for b in branches {
                    if b.is_array() {
                        return bad("a union may not directly contain a union");
                    }
                    idx.push(self.compile(b, ns)?);
                }
                Ok(self.push(Node::Union(idx.into())))
            }
            Value::Object(obj) => self.complex(obj, ns),
            other => bad(format!("{other} is not a schema")),
        }
    }

    fn named_or_primitive(&mut self, name: &str, ns: &str) -> Result<usize, SchemaError> {
        let node = match name {
            "null" => Node::Null,
            "boolean" => Node::Boolean,
            "int" => Node::Int,
            "long" => Node::Long,
            "float" => Node::Float,
            "double" => Node::Double,
            "bytes" => Node::Bytes,
            "string" => Node::String,
            _ => {
                let qualified = if name.contains('.') || ns.is_empty() {
                    name.to_string()
                } else {
                    format!("{ns}.{name}")
                };
                return self
                    .names
                    .get(&qualified)
                    .or_else(|| self.names.get(name))
                    .copied()
                    .ok_or_else(|| SchemaError(format!("unknown type {name:?}")));
            }
        };
        Ok(self.push(node))
    }

    fn complex(&mut self, obj: &Map<String, Value>, ns: &str) -> Result<usize, SchemaError> {
        let ty = match obj.get("type") {
            Some(Value::String(t)) => t.as_str(),
            // `{"type": {...}}` / `{"type": [...]}`: a wrapped schema.
            Some(inner @ (Value::Object(_) | Value::Array(_))) => return self.compile(inner, ns),
            _ => return bad(format!("{} has no \"type\"", Value::Object(obj.clone()))),
        };
        let logical = obj.get("logicalType").and_then(Value::as_str);
        match ty {
            "record" | "error" => self.record(obj, ns),
            "enum" => {
                let (full, _) = full_name(obj, ns)?;
                let Some(symbols) = obj.get("symbols").and_then(Value::as_array) else {
                    return bad(format!("enum {full}: \"symbols\" must be an array"));
                };
                let mut out = Vec::with_capacity(symbols.len());
                for s in symbols {
                    let Some(s) = s.as_str() else {
                        return bad(format!("enum {full}: symbols must be strings"));
                    };
                    out.push(json_string(s).into_boxed_slice());
                }
                let idx = self.push(Node::Enum(out.into()));
                self.define(full, idx)?;
                Ok(idx)
            }
            "fixed" => {
                let (full, _) = full_name(obj, ns)?;
                let Some(size) = obj.get("size").and_then(Value::as_u64) else {
                    return bad(format!(
                        "fixed {full}: \"size\" must be a non-negative integer"
                    ));
                };
                let size = size as usize;
                let node = match logical {
                    Some("decimal") => decimal(obj, Some(size)).unwrap_or(Node::Fixed(size)),
                    Some("uuid") if size == 16 => Node::UuidFixed,
                    _ => Node::Fixed(size),
                };
                let idx = self.push(node);
                self.define(full, idx)?;
                Ok(idx)
            }
            "array" => {
                let Some(items) = obj.get("items") else {
                    return bad("array without \"items\"");
                };
                let slot = self.push(Node::Null);
                let item = self.compile(items, ns)?;
                self.nodes[slot] = Node::Array(item);
                Ok(slot)
            }
            "map" => {
                let Some(values) = obj.get("values") else {
                    return bad("map without \"values\"");
                };
                let slot = self.push(Node::Null);
                let value = self.compile(values, ns)?;
                self.nodes[slot] = Node::Map(value);
                Ok(slot)
            }
            "bytes" if logical == Some("decimal") => {
                let node = decimal(obj, None).unwrap_or(Node::Bytes);
                Ok(self.push(node))
            }
            // Other logical types are written as their underlying type (see DESIGN.md).
            prim if PRIMITIVES.contains(&prim) => self.named_or_primitive(prim, ns),
            other => self.named_or_primitive(other, ns),
        }
    }

    fn define(&mut self, full: String, idx: usize) -> Result<(), SchemaError> {
        if self.names.insert(full.clone(), idx).is_some() {
            return bad(format!("type {full} is defined twice"));
        }
        Ok(())
    }

    fn record(&mut self, obj: &Map<String, Value>, ns: &str) -> Result<usize, SchemaError> {
        let (full, inner_ns) = full_name(obj, ns)?;
        let Some(fields) = obj.get("fields").and_then(Value::as_array) else {
            return bad(format!("record {full}: \"fields\" must be an array"));
        };
        // Reserve the slot first: a field may refer to the record itself.
        let slot = self.push(Node::Null);
        self.define(full.clone(), slot)?;
        let mut out = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                return bad(format!("record {full}: field {i} has no string \"name\""));
            };
            let Some(ty) = f.get("type") else {
                return bad(format!("record {full}: field {name} has no \"type\""));
            };
            let node = self
                .compile(ty, &inner_ns)
                .map_err(|e| SchemaError(format!("record {full}, field {name}: {e}")))?;
            let mut key = Vec::with_capacity(name.len() + 4);
            if i > 0 {
                key.push(b',');
            }
            key.extend_from_slice(&json_string(name));
            key.push(b':');
            out.push((key.into_boxed_slice(), node));
        }
        self.nodes[slot] = Node::Record(out.into());
        Ok(slot)
    }
}

/// A valid `decimal` annotation as a node; `None` when it is invalid (then, as the spec says,
/// the logical type is ignored).
fn decimal(obj: &Map<String, Value>, size: Option<usize>) -> Option<Node> {
    let precision = obj.get("precision")?.as_u64()?;
    let scale = match obj.get("scale") {
        None => 0,
        Some(s) => s.as_u64()?,
    };
    if precision == 0 || scale > precision {
        return None;
    }
    if let Some(size) = size {
        // The most digits a two's-complement number of `size` bytes holds.
        let max = ((8.0 * size as f64 - 1.0) * 2f64.log10()).floor();
        if precision as f64 > max {
            return None;
        }
    }
    Some(Node::Decimal {
        scale: u32::try_from(scale).ok()?,
        size,
    })
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, s);
    out
}

/// The Parsing Canonical Form of a schema (Avro specification, "Transforming into Parsing
/// Canonical Form").
pub fn canonical_form(json: &Value) -> Result<String, SchemaError> {
    canonical_form_as(json, false)
}

/// The canonical form, or with `python` as the Python `avro` package writes it (see
/// [`ParsedSchema::python_fingerprint`]).
fn canonical_form_as(json: &Value, python: bool) -> Result<String, SchemaError> {
    let mut out = String::new();
    let mut seen = std::collections::HashSet::new();
    canonical(json, "", &mut seen, &mut out, python)?;
    Ok(out)
}

fn canonical(
    json: &Value,
    ns: &str,
    seen: &mut std::collections::HashSet<String>,
    out: &mut String,
    python: bool,
) -> Result<(), SchemaError> {
    let push_str = |out: &mut String, s: &str| {
        out.push_str(&String::from_utf8_lossy(&json_string(s)));
    };
    match json {
        Value::String(name) => {
            if PRIMITIVES.contains(&name.as_str()) || name.contains('.') || ns.is_empty() {
                push_str(out, name);
            } else {
                push_str(out, &format!("{ns}.{name}"));
            }
        }
        Value::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(b, ns, seen, out, python)?;
            }
            out.push(']');
        }
        Value::Object(obj) => {
            let ty = match obj.get("type") {
                Some(Value::String(t)) => t.as_str(),
                Some(inner) => return canonical(inner, ns, seen, out, python),
                None => return bad("a schema object without \"type\""),
            };
            match ty {
                "record" | "error" | "enum" | "fixed" => {
                    let (full, inner_ns) = full_name(obj, ns)?;
                    if !seen.insert(full.clone()) {
                        push_str(out, &full);
                        return Ok(());
                    }
                    out.push_str("{\"name\":");
                    push_str(out, &full);
                    out.push_str(",\"type\":");
                    push_str(out, if ty == "error" { "record" } else { ty });
                    match ty {
                        "enum" => {
                            out.push_str(",\"symbols\":[");
                            let symbols = obj.get("symbols").and_then(Value::as_array);
                            for (i, s) in symbols.into_iter().flatten().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                push_str(out, s.as_str().unwrap_or_default());
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            let size = obj.get("size").and_then(Value::as_u64).unwrap_or(0);
                            out.push_str(&format!(",\"size\":{size}"));
                        }
                        _ => {
                            out.push_str(",\"fields\":[");
                            let fields = obj.get("fields").and_then(Value::as_array);
                            for (i, f) in fields.into_iter().flatten().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                out.push_str("{\"name\":");
                                push_str(out, f.get("name").and_then(Value::as_str).unwrap_or(""));
                                out.push_str(",\"type\":");
                                let Some(t) = f.get("type") else {
                                    return bad("a field without \"type\"");
                                };
                                canonical(t, &inner_ns, seen, out, python)?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                }
                "array" | "map" => {
                    let part = if ty == "array" { "items" } else { "values" };
                    out.push_str(&format!("{{\"type\":\"{ty}\",\"{part}\":"));
                    let inner = obj.get(part).unwrap_or(&Value::Null);
                    canonical(inner, ns, seen, out, python)?;
                    out.push('}');
                }
                prim if python && PRIMITIVES.contains(&prim) && obj.contains_key("logicalType") => {
                    out.push_str("{\"type\":");
                    push_str(out, prim);
                    out.push('}');
                }
                other => canonical(&Value::String(other.to_string()), ns, seen, out, python)?,
            }
        }
        other => return bad(format!("{other} is not a schema")),
    }
    Ok(())
}

/// CRC-64-AVRO (Rabin) fingerprint, as given in the Avro specification.
pub fn rabin(data: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
            }
            *slot = fp;
        }
        t
    });
    let mut fp = EMPTY;
    for &b in data {
        fp = (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
