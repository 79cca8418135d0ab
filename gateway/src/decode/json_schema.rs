//! JSON-Schema values of `format = "confluent"` topics. Input: the registry's JSON Schema and
//! its references (by name, for `$ref`), then records: after the 5-byte Confluent header, JSON
//! text. Output: that text as it is, checked to be JSON, and, with the topic's
//! `validate_json_schema = true`, valid against the schema (the validator compiled on first use
//! and kept with the schema, so once per schema id).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use super::DecodeError;

/// A registry JSON Schema.
pub struct JsonSchema {
    id: u32,
    schema: Value,
    /// The references' schemas, by name.
    references: HashMap<String, Value>,
    /// Compiled on first use; why the schema cannot be compiled, otherwise.
    validator: OnceLock<Result<jsonschema::Validator, String>>,
}

impl std::fmt::Debug for JsonSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonSchema").field("id", &self.id).finish()
    }
}

/// Gives the validator the references' schemas: a `$ref` is looked up by its whole URI, then by
/// its last path segment (the reference name, as `$ref: "address.json"` resolves to
/// `json-schema:///address.json`). Nothing is fetched.
struct References(HashMap<String, Value>);

impl jsonschema::Retrieve for References {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let whole = uri.as_str();
        let last = uri.path().as_str().rsplit('/').next().unwrap_or_default();
        self.0
            .get(whole)
            .or_else(|| self.0.get(last))
            .cloned()
            .ok_or_else(|| format!("{whole} is not one of the schema's references").into())
    }
}

impl JsonSchema {
    /// Schema `id`'s text with its `references` (name, text); an error when one is not JSON.
    pub fn parse(id: u32, text: &str, references: &[(String, String)]) -> Result<Self, String> {
        let json = |what: &str, t: &str| {
            serde_json::from_str::<Value>(t)
                .map_err(|e| format!("schema {id}: {what} is not JSON: {e}"))
        };
        let schema = json("the JSON Schema", text)?;
        let references = references
            .iter()
            .map(|(name, t)| Ok((name.clone(), json(&format!("reference {name}"), t)?)))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            id,
            schema,
            references,
            validator: OnceLock::new(),
        })
    }

    fn validator(&self) -> Result<&jsonschema::Validator, DecodeError> {
        self.validator
            .get_or_init(|| {
                jsonschema::options()
                    .with_retriever(References(self.references.clone()))
                    .build(&self.schema)
                    .map_err(|e| format!("the JSON Schema does not compile: {e}"))
            })
            .as_ref()
            .map_err(|why| DecodeError::BadSchema {
                id: self.id,
                why: why.clone(),
            })
    }
}

/// The JSON of a JSON-Schema value: `data` (what follows the Confluent header) as it is, once it
/// is checked to be JSON and, with `validate`, valid against `schema`.
pub fn to_json(schema: &JsonSchema, data: &[u8], validate: bool) -> Result<Vec<u8>, DecodeError> {
    if validate {
        let value: Value = serde_json::from_slice(data).map_err(DecodeError::BadJson)?;
        if let Err(e) = schema.validator()?.validate(&value) {
            let at = e.instance_path().to_string();
            return Err(DecodeError::JsonSchemaInvalid {
                id: schema.id,
                why: if at.is_empty() {
                    e.to_string()
                } else {
                    format!("at {at}: {e}")
                },
            });
        }
    } else {
        serde_json::from_slice::<serde::de::IgnoredAny>(data).map_err(DecodeError::BadJson)?;
    }
    Ok(data.to_vec())
}
