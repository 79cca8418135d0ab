//! The `LAKEWIRE_*` environment overrides as a figment provider, and figment's errors as
//! messages that name the key and where it came from.

use super::ENV_PREFIX;

/// The `LAKEWIRE_*` pairs of an environment as a figment provider. Figment's own `Env` reads the
/// process environment; this one reads only the list it is given.
pub(super) struct EnvPairs(Vec<(String, String)>);

pub(super) fn env_provider(env: &[(String, String)]) -> EnvPairs {
    EnvPairs(
        env.iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(ENV_PREFIX)?;
                (!key.is_empty()).then(|| (key.to_ascii_lowercase().replace("__", "."), v.clone()))
            })
            .collect(),
    )
}

impl figment::Provider for EnvPairs {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (key, raw) in &self.0 {
            let value: figment::value::Value = raw.parse().unwrap_or_else(|e| match e {});
            if let Some(nested) = figment::util::nest(key, value).into_dict() {
                merge_into(&mut dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Deep-merges `from` into `into` (later keys win), so `A__B` and `A__C` both land under `a`.
fn merge_into(into: &mut figment::value::Dict, from: figment::value::Dict) {
    use figment::value::Value;
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, incoming)) => {
                merge_into(existing, incoming)
            }
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Turns figment's error into one line per problem that names the key and its origin.
pub(super) fn describe(error: figment::Error, origin: &str) -> String {
    use figment::error::Kind;
    let mut lines = Vec::new();
    for e in error {
        let mut path = e.path.join(".");
        let from = match &e.metadata {
            Some(m) if m.name.contains("environment") => {
                let var = format!(
                    "{ENV_PREFIX}{}",
                    path.replace('.', "__").to_ascii_uppercase()
                );
                format!(" (from environment variable {var})")
            }
            _ => format!(" (in {origin})"),
        };
        let what = match &e.kind {
            Kind::UnknownField(name, expected) => {
                path = join_key(&path, name);
                format!("unknown key; expected one of: {}", expected.join(", "))
            }
            Kind::MissingField(name) => {
                path = join_key(&path, name);
                "missing required key".to_string()
            }
            Kind::UnknownVariant(value, expected) => {
                format!(
                    "unknown value {value:?}; expected one of: {}",
                    expected.join(", ")
                )
            }
            other => other.to_string(),
        };
        let key = if path.is_empty() {
            "<top level>".to_string()
        } else {
            path
        };
        lines.push(format!("{key}: {what}{from}"));
    }
    lines.join("\n")
}

fn join_key(parent: &str, name: &str) -> String {
    // Figment sometimes puts the offending key in the path already.
    if parent == name || parent.ends_with(&format!(".{name}")) {
        parent.to_string()
    } else if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}
