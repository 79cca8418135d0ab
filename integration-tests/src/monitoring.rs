//! The monitoring files in `deploy/`: the Grafana dashboard's and the Prometheus alert rules'
//! queries, and the metric names they use.

use std::collections::BTreeSet;

use serde_json::Value;

/// The PromQL of the dashboard's panels and of the alert rules: (dashboard, alerts). Checks on
/// the way that each rule has what Prometheus and the on-call need (expr, for, severity,
/// summary).
pub fn monitoring_queries() -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(format!(
        "{root}/deploy/grafana/lakewire.json"
    ))?)?;
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
                .filter_map(|t| t["expr"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(exprs.len() >= 10, "dashboard has {} queries", exprs.len());
    let alerts: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(format!(
        "{root}/deploy/prometheus/alerts.yml"
    ))?)?;
    let mut alert_exprs = Vec::new();
    for g in alerts["groups"].as_array().cloned().unwrap_or_default() {
        anyhow::ensure!(g["name"].is_string(), "a rule group without a name");
        for r in g["rules"].as_array().cloned().unwrap_or_default() {
            let name = r["alert"].as_str().unwrap_or("<no name>");
            let expr = r["expr"].as_str().unwrap_or("");
            anyhow::ensure!(!expr.is_empty(), "alert {name} has no expr");
            anyhow::ensure!(r["for"].is_string(), "alert {name} has no `for`");
            anyhow::ensure!(
                ["warning", "critical"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
                "alert {name}: severity"
            );
            anyhow::ensure!(
                r["annotations"]["summary"].is_string(),
                "alert {name}: summary"
            );
            alert_exprs.push(expr.to_string());
        }
    }
    Ok((exprs, alert_exprs))
}

/// Every `lakewire_*` metric name in `text`.
pub fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("lakewire_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
