//! Hive paths of the sink's files. Input: a table's partition columns and a record (its
//! timestamp, its value's top-level fields); output: the partition values, the Hive-escaped
//! partition folder `k1=v1/k2=v2` below the table, and the file name
//! `<topic>+<partition>+<start>+<end>.parquet`; and back, from a listed folder and name to the
//! values and offsets (resuming, registering).

use crate::decode::Decoder;
use crate::record::RawRecord;

/// Hive's name for a null or empty partition value.
pub const HIVE_DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// A landed file's name, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

impl FileName {
    /// `<topic>+<partition>+<start>+<end>.parquet`
    pub fn render(&self) -> String {
        format!(
            "{}+{}+{}+{}.parquet",
            self.topic, self.partition, self.start, self.end
        )
    }

    /// The parsed name of a landed file (not a temporary one).
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".parquet")?;
        let mut parts = stem.rsplitn(4, '+');
        let end = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let topic = parts.next()?;
        if topic.is_empty() || topic.starts_with(['_', '.']) {
            return None;
        }
        Some(Self {
            topic: topic.to_string(),
            partition,
            start,
            end,
        })
    }
}

/// `k1=v1/k2=v2` for the partition columns and their values.
pub(super) fn hive_dir(keys: &[String], values: &[String]) -> String {
    keys.iter()
        .zip(values)
        .map(|(k, v)| format!("{k}={}", escape_value(v)))
        .collect::<Vec<_>>()
        .join("/")
}

/// A Hive partition value made safe for a path segment (Hive's escaping: `%XX` for `/`, `=`,
/// `%`, control characters and the other characters Hive escapes).
pub fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if c.is_control()
            || matches!(
                c,
                '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
            )
        {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        HIVE_DEFAULT_PARTITION.to_string()
    } else {
        out
    }
}

/// Undoes [`escape_value`].
pub fn unescape_value(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The values of a partition directory `k1=v1/k2=v2`, in order.
pub fn dir_values(dir: &str) -> Vec<String> {
    dir.split('/')
        .filter(|s| !s.is_empty())
        .map(|seg| unescape_value(seg.split_once('=').map_or(seg, |(_, v)| v)))
        .collect()
}

/// The Hive partition values of a record: `dt`/`hr` from its timestamp (UTC), other names
/// from the value's top-level fields (decoded to JSON for it; null or missing: Hive's default
/// partition).
pub(super) fn partition_values(
    partition_by: &[String],
    decoder: &Decoder,
    raw: &RawRecord<'_>,
) -> Vec<String> {
    let mut json: Option<serde_json::Value> = None;
    partition_by
        .iter()
        .map(|k| match (k.as_str(), raw.timestamp) {
            ("dt", Some(ts)) => {
                let (y, m, d) = civil_from_days(ts.div_euclid(86_400_000));
                format!("{y:04}-{m:02}-{d:02}")
            }
            ("hr", Some(ts)) => format!("{:02}", ts.rem_euclid(86_400_000) / 3_600_000),
            ("dt" | "hr", None) => HIVE_DEFAULT_PARTITION.to_string(),
            (field, _) => {
                let v = json.get_or_insert_with(|| {
                    decoder
                        .decode(raw)
                        .map(|r| r.value().clone())
                        .unwrap_or(serde_json::Value::Null)
                });
                match v.get(field) {
                    None | Some(serde_json::Value::Null) => HIVE_DEFAULT_PARTITION.to_string(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                }
            }
        })
        .collect()
}

/// The civil date of a day number (days since 1970-01-01); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = FileName {
            topic: "orders.v1".into(),
            partition: 3,
            start: 100,
            end: 199,
        };
        assert_eq!(n.render(), "orders.v1+3+100+199.parquet");
        assert_eq!(FileName::parse(&n.render()), Some(n));
        assert_eq!(FileName::parse("_tmp.1.orders+3+1+2.parquet"), None);
        assert_eq!(FileName::parse("orders+3+1+2.parquet#1"), None);
        assert_eq!(FileName::parse("part-0.parquet"), None);
    }

    #[test]
    fn partition_values_escape_and_round_trip() {
        for v in ["EUR", "a/b=c", "50%", "x:y", "ünï"] {
            let e = escape_value(v);
            assert!(!e.contains('/') && !e.contains('='), "{e}");
            assert_eq!(dir_values(&format!("k={e}")), vec![v.to_string()]);
        }
        assert_eq!(escape_value(""), HIVE_DEFAULT_PARTITION);
        assert_eq!(
            dir_values("dt=2026-11-27/hr=09"),
            vec!["2026-11-27".to_string(), "09".to_string()]
        );
    }

    #[test]
    fn timestamps_give_utc_date_and_hour() -> anyhow::Result<()> {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_419), (2025, 11, 27));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        Ok(())
    }
}
