//! Demo against a real Kafka: `lakewire produce-demo` ([`produce_to`]). Input: the brokers,
//! optionally a schema registry URL, and a topic name prefix; output: the demo topics created
//! (an existing one is kept), the schemas registered when there is a registry, and the
//! synthetic records written until stopped. Broker and registry are retried for a while at
//! start-up, since `docker compose up` starts them alongside.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::synthetic::{self, produce, single_object_prefix};
use super::{DemoError, TOPICS};
use crate::decode::schema::ParsedSchema;

/// The Confluent framing of a record whose schema has registry id `id`.
fn confluent_prefix(id: u32) -> Vec<u8> {
    let mut p = vec![0x00];
    p.extend_from_slice(&id.to_be_bytes());
    p
}

/// How long `produce_to` keeps retrying the broker or the registry at start-up (they may still
/// be starting, as in `docker compose up`).
const START_RETRY: Duration = Duration::from_secs(120);

/// `lakewire produce-demo`: creates the demo topics on `brokers`, each name after
/// `topic_prefix` (an existing topic is kept), then writes the demo's synthetic records to them
/// until `stop` resolves. With `registry` the schemas are registered under `<topic>-value` and
/// records carry the Confluent framing (gateway topics with `format = "confluent"`); without,
/// the single-object framing.
pub async fn produce_to(
    brokers: &str,
    registry: Option<&str>,
    topic_prefix: &str,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DemoError> {
    let names: Vec<String> = TOPICS
        .iter()
        .map(|(name, ..)| format!("{topic_prefix}{name}"))
        .collect();
    create_topics(brokers, &names).await?;
    let mut outputs = Vec::new();
    for ((_, _, _, _, text), topic) in TOPICS.iter().zip(names) {
        let prefix = match registry {
            Some(url) => confluent_prefix(register(url, &format!("{topic}-value"), text).await?),
            None => single_object_prefix(
                ParsedSchema::parse(text)
                    .map_err(|e| DemoError::Schema(e.to_string()))?
                    .fingerprint,
            ),
        };
        outputs.push((topic, prefix));
    }
    let producer = synthetic::producer(brokers)?;
    let cancel = CancellationToken::new();
    tracing::info!(
        brokers,
        registry,
        topics = %outputs.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(", "),
        "producing the demo topics"
    );
    let producing = tokio::spawn(produce(producer, outputs, cancel.clone()));
    stop.await;
    cancel.cancel();
    if let Err(e) = producing.await {
        tracing::warn!(error = %e, "demo producer task failed");
    }
    Ok(())
}

/// Creates the demo topics (`names`, in [`TOPICS`] order) with their partition counts, retrying
/// while the broker starts.
async fn create_topics(brokers: &str, names: &[String]) -> Result<(), DemoError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let clients = synthetic::clients(brokers);
    let admin: AdminClient<crate::kafka::KafkaContext> = clients
        .admin("lakewire-demo-admin")
        .create_with_context(clients.context("demo-admin"))
        .map_err(|e| DemoError::Topics(e.to_string()))?;
    let topics: Vec<NewTopic<'_>> = TOPICS
        .iter()
        .zip(names)
        .map(|((_, partitions, ..), name)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(1))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deadline = tokio::time::Instant::now() + START_RETRY;
    loop {
        let failed = match admin.create_topics(&topics, &opts).await {
            Ok(results) => results
                .into_iter()
                .filter_map(|r| match r {
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) | Ok(_) => None,
                    Err((topic, code)) => Some(format!("{topic}: {code}")),
                })
                .collect::<Vec<_>>(),
            Err(e) => vec![e.to_string()],
        };
        if failed.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(DemoError::Topics(failed.join(", ")));
        }
        tracing::warn!(errors = %failed.join(", "), "cannot create the demo topics yet; retrying");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Registers `schema` under `subject` in the Confluent-compatible registry at `url` and returns
/// its id, retrying while the registry starts.
async fn register(url: &str, subject: &str, schema: &str) -> Result<u32, DemoError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| DemoError::Registry(e.to_string()))?;
    let endpoint = format!("{}/subjects/{subject}/versions", url.trim_end_matches('/'));
    let body = serde_json::json!({ "schema": schema }).to_string();
    let deadline = tokio::time::Instant::now() + START_RETRY;
    loop {
        let attempt = async {
            let resp = client
                .post(&endpoint)
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .body(body.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let text = resp.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("POST {endpoint}: {status} {text}"));
            }
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["id"].as_u64())
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("POST {endpoint}: no id in {text}"))
        };
        match attempt.await {
            Ok(id) => return Ok(id),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(DemoError::Registry(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the demo schema yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}
