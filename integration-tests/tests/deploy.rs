//! The deployment files, checked against what the gateway really does: `deploy/Dockerfile`
//! against the binary cargo builds (its shared libraries, its health subcommand), the top-level
//! `docker-compose.yml` against docs/configuration.md and `lakewire check`, and the Helm chart
//! (`deploy/helm/lakewire`, rendered by the real `helm template`, behind the `helm` feature)
//! against the same. None of this needs Docker or Kubernetes: those are not on the test machine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use lakewire_integration_tests::process::{lakewire_check, lakewire_command};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every configuration key docs/configuration.md documents, as dotted paths
/// (`kafka.brokers`, `websocket.listen`, `schemas_dir`, `sink.s3.endpoint`, ...): the first
/// backticked word of each table row, under its `## \`[section]\`` heading.
fn documented_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section: Option<String> = None;
    for line in read("docs/configuration.md").lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h
                .split('`')
                .nth(1)
                .map(|s| s.trim_matches(|c| c == '[' || c == ']').to_string());
            if h.contains("(top level)") {
                section = Some(String::new());
            }
        } else if let (Some(sec), Some(row)) = (&section, line.strip_prefix("| `"))
            && let Some(key) = row.split('`').next()
        {
            keys.insert(if sec.is_empty() {
                key.to_string()
            } else {
                format!("{sec}.{key}")
            });
        }
    }
    keys
}

/// The key a `LAKEWIRE_*` variable sets (`LAKEWIRE_KAFKA__BROKERS` -> `kafka.brokers`), if it is
/// one.
fn env_key(var: &str) -> Option<String> {
    var.strip_prefix("LAKEWIRE_").map(|k| {
        k.split("__")
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(".")
    })
}

/// Asserts every `LAKEWIRE_*` variable names a documented key (or a key inside a documented
/// table such as `kafka.properties`).
fn assert_documented(vars: &[(String, String)], whose: &str) {
    let keys = documented_keys();
    assert!(
        keys.contains("kafka.brokers") && keys.contains("websocket.listen"),
        "{keys:?}"
    );
    for (var, _) in vars {
        if let Some(key) = env_key(var) {
            assert!(
                keys.iter()
                    .any(|k| key == *k || key.starts_with(&format!("{k}."))),
                "{whose}: {var} sets `{key}`, which docs/configuration.md does not document"
            );
        }
    }
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A compose service's environment as (name, value) pairs (map or `NAME=value` list form).
fn compose_env(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(_) => str_list(&service["environment"])
            .iter()
            .filter_map(|s| {
                s.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The `--config` path in a `lakewire run` command and the repository file mounted there.
fn mounted_config(name: &str, service: &Value) -> (String, String) {
    let cmd = str_list(&service["command"]);
    let at = cmd.iter().position(|a| a == "--config").map(|i| i + 1);
    let target = at
        .and_then(|i| cmd.get(i))
        .cloned()
        .unwrap_or_else(|| panic!("{name}: no --config in {cmd:?}"));
    let source = str_list(&service["volumes"])
        .into_iter()
        .find_map(|v| {
            let mut parts = v.split(':');
            let (src, dst) = (parts.next()?, parts.next()?);
            (dst == target).then(|| src.trim_start_matches("./").to_string())
        })
        .unwrap_or_else(|| panic!("{name}: nothing is mounted at {target}"));
    assert!(
        root().join(&source).is_file(),
        "{name}: mounts {source}, which is not in the repository"
    );
    (target, source)
}

/// `host:port` pairs named in `text` (`kafka:9092`, `http://schema-registry:8081`, ...) whose
/// host is one of `services`.
fn service_addresses(text: &str, services: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for s in services {
        let mut rest = text;
        while let Some(i) = rest.find(&format!("{s}:")) {
            let before = rest[..i].chars().last();
            let tail = &rest[i + s.len() + 1..];
            let port: String = tail.chars().take_while(char::is_ascii_digit).collect();
            let boundary =
                before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'));
            if boundary && !port.is_empty() {
                found.push((s.clone(), port));
            }
            rest = tail;
        }
    }
    found
}

/// The ports a compose service listens on: `expose` and the container side of `ports`.
fn listening_ports(service: &Value) -> BTreeSet<String> {
    let mut ports: BTreeSet<String> = str_list(&service["expose"]).into_iter().collect();
    for p in str_list(&service["ports"]) {
        if let Some(container) = p.rsplit(':').next() {
            ports.insert(container.split('/').next().unwrap_or(container).to_string());
        }
    }
    ports
}

#[test]
fn compose_file_is_valid_for_docker_compose() -> anyhow::Result<()> {
    // The schema Docker Compose itself validates with (integration-tests/fixtures/README.md).
    let schema: Value =
        serde_json::from_str(&read("integration-tests/fixtures/compose-spec.json"))?;
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .map_err(|e| anyhow::anyhow!("compose-spec.json: {e}"))?;
    let compose = yaml("docker-compose.yml");
    let errors: Vec<String> = validator
        .iter_errors(&compose)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "docker-compose.yml: {errors:#?}");
    // ... and a file with a mistake is refused (the schema does check).
    let mut bad = compose.clone();
    bad["services"]["lakewire"]["ports"] = serde_json::json!({"8080": 8080});
    assert!(!validator.is_valid(&bad));
    Ok(())
}

#[test]
fn compose_file_runs_what_the_gateway_needs() -> anyhow::Result<()> {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().context("services")?;
    let names: BTreeSet<String> = services.keys().cloned().collect();
    let image = |s: &str| services[s]["image"].as_str().unwrap_or("").to_string();

    // The parts the issue names, from the images it names.
    assert!(
        image("kafka").starts_with("apache/kafka:"),
        "{}",
        image("kafka")
    );
    let kafka_env: BTreeMap<_, _> = compose_env(&services["kafka"]).into_iter().collect();
    assert!(
        kafka_env
            .get("KAFKA_PROCESS_ROLES")
            .is_some_and(|r| r.contains("controller")),
        "Kafka must run in KRaft mode (no ZooKeeper)"
    );
    assert!(image("schema-registry").starts_with("confluentinc/cp-schema-registry:"));
    assert!(image("s3").starts_with("andrewgaul/s3proxy"));
    assert!(image("hive-metastore").starts_with("apache/hive:4."));
    assert!(
        compose_env(&services["hive-metastore"])
            .contains(&("SERVICE_NAME".into(), "metastore".into()))
    );

    // Lakewire's services: the image built from deploy/Dockerfile, each in its role.
    let roles = [("lakewire", "gateway"), ("sink", "sink")];
    for name in ["lakewire", "sink", "demo-producer"] {
        let s = &services[name];
        assert_eq!(s["build"]["dockerfile"], "deploy/Dockerfile", "{name}");
        assert!(root().join("deploy/Dockerfile").is_file());
    }
    for (name, role) in roles {
        let cmd = str_list(&services[name]["command"]);
        assert_eq!(cmd[..1], ["run".to_string()], "{name}: {cmd:?}");
        let r = cmd
            .iter()
            .position(|a| a == "--role")
            .and_then(|i| cmd.get(i + 1));
        assert_eq!(r.map(String::as_str), Some(role), "{name}: {cmd:?}");
    }

    // Every LAKEWIRE_* variable of every service is a documented key.
    for (name, s) in services {
        assert_documented(
            &compose_env(s),
            &format!("docker-compose.yml service {name}"),
        );
    }

    // The gateway's configuration, as the container sees it (mounted file + environment),
    // passes `lakewire check`, and is what the rest of the file assumes.
    let gw = &services["lakewire"];
    let (_, source) = mounted_config("lakewire", gw);
    let env: Vec<(String, String)> = compose_env(gw)
        .into_iter()
        .filter(|(k, _)| k.starts_with("LAKEWIRE_"))
        .collect();
    let checked = lakewire_check(&read(&source), &env).context("the gateway's configuration")?;
    let config = lakewire::config::Config::load(&root().join(&source), &env).context("config")?;
    let port = config.websocket.listen.port().to_string();
    assert!(
        checked.contains(&format!("listening on {}", config.websocket.listen)),
        "{checked}"
    );
    assert!(
        config.websocket.listen.ip().is_unspecified(),
        "in a container the gateway must listen on 0.0.0.0"
    );
    // The dashboard port is published, and the header comment's URL is it.
    let published = str_list(&gw["ports"])
        .into_iter()
        .find_map(|p| {
            let (host, container) = p.rsplit_once(':')?;
            (container == port).then(|| host.rsplit(':').next().unwrap_or(host).to_string())
        })
        .unwrap_or_else(|| panic!("the gateway's port {port} is not published"));
    assert!(
        read("docker-compose.yml").contains(&format!("http://127.0.0.1:{published}/")),
        "the dashboard URL in the header comment is not the published port {published}"
    );

    // Every host:port the gateway, the sink worker and the producer are told about is a service
    // of this file that listens there.
    let sink_source = mounted_config("sink", &services["sink"]).1;
    let mut told = format!(
        "{} {} {}",
        config.kafka.brokers,
        config
            .schema_registry
            .as_ref()
            .map(|r| r.url.as_str())
            .unwrap_or(""),
        read(&sink_source)
    );
    for name in ["lakewire", "sink", "demo-producer"] {
        told.push_str(&format!(
            " {:?} {:?}",
            compose_env(&services[name]),
            str_list(&services[name]["command"])
        ));
    }
    let addresses = service_addresses(&told, &names);
    for needed in ["kafka", "schema-registry", "s3", "hive-metastore"] {
        assert!(
            addresses.iter().any(|(s, _)| s == needed),
            "nothing points at {needed}: {told}"
        );
    }
    for (service, port) in &addresses {
        assert!(
            listening_ports(&services[service]).contains(port),
            "{service}:{port} is used, but {service} does not expose {port}"
        );
    }
    // The sink worker and the metastore sign S3 requests with the store's credentials.
    let s3: BTreeMap<_, _> = compose_env(&services["s3"]).into_iter().collect();
    let sink_toml = read(&sink_source);
    let metastore_opts = compose_env(&services["hive-metastore"])
        .into_iter()
        .find(|(k, _)| k == "SERVICE_OPTS")
        .map(|(_, v)| v)
        .unwrap_or_default();
    for (var, key, hadoop) in [
        ("S3PROXY_IDENTITY", "access_key_id", "fs.s3a.access.key"),
        (
            "S3PROXY_CREDENTIAL",
            "secret_access_key",
            "fs.s3a.secret.key",
        ),
    ] {
        let value = s3.get(var).with_context(|| format!("s3: {var}"))?;
        assert!(
            sink_toml.contains(&format!("{key} = \"{value}\"")),
            "sink {key} is not {var}"
        );
        assert!(
            metastore_opts.contains(&format!("-D{hadoop}={value}")),
            "metastore {hadoop} is not {var}"
        );
    }
    // The producer registers its schemas where the gateway looks them up.
    let producer = str_list(&services["demo-producer"]["command"]);
    assert_eq!(producer[0], "produce-demo");
    let arg = |flag: &str| {
        producer
            .iter()
            .position(|a| a == flag)
            .and_then(|i| producer.get(i + 1))
            .cloned()
    };
    assert_eq!(
        arg("--brokers").as_deref(),
        Some(config.kafka.brokers.as_str())
    );
    assert_eq!(
        arg("--registry"),
        config.schema_registry.as_ref().map(|r| r.url.clone())
    );

    // depends_on names services; the gateway waits for a healthy broker and registry.
    for (name, s) in services {
        if let Some(deps) = s["depends_on"].as_object() {
            for dep in deps.keys() {
                assert!(
                    names.contains(dep),
                    "{name} depends on unknown service {dep}"
                );
                if deps[dep]["condition"] == "service_healthy" {
                    assert!(
                        services[dep]["healthcheck"]["test"].is_array(),
                        "{dep} has no health check"
                    );
                }
            }
        }
    }
    for dep in ["kafka", "schema-registry"] {
        assert_eq!(
            gw["depends_on"][dep]["condition"], "service_healthy",
            "lakewire on {dep}"
        );
    }

    // Named volumes are declared; bind mounts exist.
    let declared: BTreeSet<String> = compose["volumes"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for (name, s) in services {
        for v in str_list(&s["volumes"]) {
            let src = v.split(':').next().unwrap_or("");
            if src.starts_with('.') || src.starts_with('/') {
                assert!(
                    root().join(src.trim_start_matches("./")).exists(),
                    "{name}: {src} missing"
                );
            } else {
                assert!(
                    declared.contains(src),
                    "{name}: volume {src} is not declared"
                );
            }
        }
    }
    Ok(())
}

/// The `[sink]` keys the sink contract fixes, to check the compose sink configuration against
/// until `lakewire check` knows the section.
const SINK_KEYS: &[&str] = &[
    "root",
    "group_id",
    "compression",
    "roll_rows",
    "roll_bytes",
    "roll_interval_ms",
    "metastore_uri",
    "database",
    "endpoint",
    "region",
    "access_key_id",
    "secret_access_key",
    "allow_http",
    "topic",
    "table",
    "partition_by",
];

/// Splits a TOML text at its first `[sink...]` table: (before, from there on).
fn split_sink(toml: &str) -> (String, String) {
    match toml.find("\n[sink") {
        Some(i) => (toml[..i].to_string(), toml[i..].to_string()),
        None => (toml.to_string(), String::new()),
    }
}

#[test]
fn compose_sink_worker_serves_the_gateways_topics_with_contract_sink_keys() -> anyhow::Result<()> {
    let compose = yaml("docker-compose.yml");
    let sink = &compose["services"]["sink"];
    let (_, source) = mounted_config("sink", sink);
    let (base, sink_part) = split_sink(&read(&source));
    assert!(
        sink_part.contains("[sink]") && sink_part.contains("[[sink.tables]]"),
        "{source}"
    );
    let env: Vec<(String, String)> = compose_env(sink)
        .into_iter()
        .filter(|(k, _)| k.starts_with("LAKEWIRE_"))
        .collect();
    lakewire_check(&base, &env).context("the sink worker's configuration without [sink]")?;
    for line in sink_part.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let key = line.split('=').next().unwrap_or("").trim();
        assert!(
            SINK_KEYS.contains(&key),
            "{source}: `{key}` is not a [sink] key of the contract"
        );
    }
    // Every sink table's topic is one the configuration serves.
    for line in sink_part
        .lines()
        .filter(|l| l.trim_start().starts_with("topic"))
    {
        let topic = line.split('"').nth(1).unwrap_or("");
        assert!(
            base.contains(&format!("name = \"{topic}\"")),
            "sink table on unknown topic {topic}"
        );
    }
    Ok(())
}

#[test]
fn compose_sink_configuration_passes_lakewire_check() -> anyhow::Result<()> {
    let compose = yaml("docker-compose.yml");
    let sink = &compose["services"]["sink"];
    let (_, source) = mounted_config("sink", sink);
    let env: Vec<(String, String)> = compose_env(sink)
        .into_iter()
        .filter(|(k, _)| k.starts_with("LAKEWIRE_"))
        .collect();
    lakewire_check(&read(&source), &env).context("the sink worker's configuration")?;
    let help = lakewire_command()
        .context("bin")?
        .args(["run", "--help"])
        .output()
        .context("run --help")?;
    assert!(String::from_utf8_lossy(&help.stdout).contains("--role"));
    Ok(())
}

/// One Dockerfile instruction: keyword and the rest (continuation lines joined).
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(cont) = t.strip_suffix('\\') {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (kw, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((kw.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_builds_the_release_binary_into_a_small_non_root_image() -> anyhow::Result<()> {
    let instructions = dockerfile();
    // Stages: a build stage, then the runtime.
    let stages: Vec<(usize, &String)> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, (_, r))| (i, r))
        .collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    let build_name = stages[0].1.split_whitespace().last().unwrap_or("");
    assert!(
        stages[0].1.to_lowercase().contains(" as "),
        "the build stage is named"
    );
    let runtime_base = stages[1].1.split_whitespace().next().unwrap_or("");
    assert!(
        runtime_base.starts_with("debian:") && runtime_base.ends_with("-slim")
            || runtime_base.starts_with("gcr.io/distroless/cc"),
        "runtime base {runtime_base} is not a small image"
    );
    let (build, runtime) = instructions.split_at(stages[1].0);

    // The binary copied is the one `cargo build --release -p lakewire` makes.
    let gateway_toml = read("gateway/Cargo.toml");
    assert!(
        gateway_toml.contains("name = \"lakewire\""),
        "package/bin name"
    );
    let workdir = build
        .iter()
        .rev()
        .find(|(k, _)| k == "WORKDIR")
        .map(|(_, r)| r.clone())
        .context("WORKDIR")?;
    let cargo = build
        .iter()
        .find(|(k, r)| k == "RUN" && r.contains("cargo build"))
        .map(|(_, r)| r.clone())
        .context("a cargo build")?;
    assert!(
        cargo.contains("--release") && cargo.contains("-p lakewire"),
        "{cargo}"
    );
    let copy = runtime
        .iter()
        .find(|(k, r)| k == "COPY" && r.starts_with("--from="))
        .map(|(_, r)| r.clone())
        .context("COPY --from")?;
    assert_eq!(
        copy.split_whitespace().take(2).collect::<Vec<_>>(),
        vec![
            format!("--from={build_name}"),
            format!("{workdir}/target/release/lakewire")
        ]
    );
    let installed_bin = copy.split_whitespace().nth(2).unwrap_or("");
    let entrypoint = runtime
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, r)| r.clone())
        .context("ENTRYPOINT")?;
    let entry: Vec<String> = serde_json::from_str(&entrypoint).context("exec-form ENTRYPOINT")?;
    assert!(
        entry[0] == "lakewire" && installed_bin.starts_with("/usr/local/bin/")
            || entry[0] == installed_bin,
        "ENTRYPOINT {entry:?} does not run {installed_bin}"
    );

    // Non-root, with the uid the Helm chart runs as.
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, r)| r.clone())
        .context("USER")?;
    let uid = user.split(':').next().unwrap_or("");
    assert!(
        uid != "0" && uid != "root" && !uid.is_empty(),
        "USER {user}"
    );
    let values = yaml("deploy/helm/lakewire/values.yaml");
    assert_eq!(
        values["podSecurityContext"]["runAsUser"].to_string(),
        uid,
        "chart runAsUser vs USER"
    );

    // EXPOSE, the listen address, the chart's port and the health check agree.
    let expose = runtime
        .iter()
        .find(|(k, _)| k == "EXPOSE")
        .map(|(_, r)| r.clone())
        .context("EXPOSE")?;
    let env = runtime
        .iter()
        .find(|(k, r)| k == "ENV" && r.starts_with("LAKEWIRE_WEBSOCKET__LISTEN"))
        .map(|(_, r)| r.clone())
        .context("ENV listen")?;
    assert!(
        env.ends_with(&format!(":{expose}")),
        "{env} vs EXPOSE {expose}"
    );
    assert_eq!(values["port"].to_string(), expose, "chart port vs EXPOSE");
    let health = runtime
        .iter()
        .find(|(k, _)| k == "HEALTHCHECK")
        .map(|(_, r)| r.clone())
        .context("HEALTHCHECK")?;
    let cmd = health
        .split_once("CMD ")
        .map(|(_, c)| c)
        .context("HEALTHCHECK CMD")?;
    let cmd: Vec<String> = serde_json::from_str(cmd).context("exec-form health check")?;
    assert_eq!(
        cmd[..2],
        ["lakewire".to_string(), "health".to_string()],
        "{cmd:?}"
    );
    assert_eq!(
        cmd.last().map(String::as_str),
        Some(format!("http://127.0.0.1:{expose}/healthz").as_str())
    );
    // ... and the binary has that subcommand with those flags.
    let help = lakewire_command()
        .context("bin")?
        .args(["health", "--help"])
        .output()
        .context("health --help")?;
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--url"));

    // The default configuration baked into the image passes `lakewire check` with its ENV.
    let (k, v) = env.split_once('=').context("ENV K=V")?;
    lakewire_check(
        &read("deploy/lakewire.toml"),
        &[(k.to_string(), v.to_string())],
    )
    .context("deploy/lakewire.toml")?;

    // Every shared library the binary needs comes with the runtime image: the base system's, or
    // a package the runtime stage installs.
    let base: &[&str] = &[
        "linux-vdso",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
        "libpthread",
        "libdl.so",
        "librt.so",
    ];
    let packages: &[(&str, &str)] = &[
        ("libssl.so.3", "libssl3"),
        ("libcrypto.so.3", "libssl3"),
        ("libz.so.1", "zlib1g"),
    ];
    let apt = runtime
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, r)| r.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let bin = lakewire_integration_tests::process::lakewire_bin().context("bin")?;
    let ldd = std::process::Command::new("ldd")
        .arg(&bin)
        .output()
        .context("ldd")?;
    let ldd = String::from_utf8_lossy(&ldd.stdout).to_string();
    assert!(ldd.contains("libc.so"), "{ldd}");
    for lib in ldd.lines().filter_map(|l| l.split_whitespace().next()) {
        if base.iter().any(|b| lib.contains(b)) {
            continue;
        }
        let package = packages
            .iter()
            .find(|(l, _)| lib == *l)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| {
                panic!("the binary needs {lib}: add its package to the runtime stage and here")
            });
        assert!(
            apt.split_whitespace().any(|w| w == package),
            "{lib} needs package {package} in the runtime stage"
        );
    }

    // The build context leaves out build outputs.
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        ".dockerignore must leave out target/"
    );
    Ok(())
}

#[test]
fn readme_says_compose_is_for_machines_with_docker() -> anyhow::Result<()> {
    let readme = read("README.md");
    let section = readme
        .split("## Running in production")
        .nth(1)
        .context("README: Running in production")?;
    assert!(section.contains("docker compose up"), "compose");
    assert!(section.contains("machines with Docker") || section.contains("machine with Docker"));
    assert!(section.contains("helm install"), "helm");
    assert!(
        section.contains("```mermaid") || section.contains("┌") || section.contains("+--"),
        "a topology diagram"
    );
    assert!(
        section.contains("BENCHMARKS.md"),
        "sizing backed by the benchmark figures"
    );
    Ok(())
}

#[cfg(feature = "helm")]
mod helm {
    //! The chart, rendered by the real `helm` (v3.22.0, built by integration-tests/run-all into
    //! integration-tests/.cache/go/bin; `HELM` overrides).
    use super::*;
    use std::process::Command;

    fn helm() -> PathBuf {
        std::env::var_os("HELM")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("integration-tests/.cache/go/bin/helm"))
    }

    fn chart() -> PathBuf {
        root().join("deploy/helm/lakewire")
    }

    fn run_helm(args: &[&str]) -> std::process::Output {
        Command::new(helm())
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (integration-tests/run-all builds it)",
                    helm().display()
                )
            })
    }

    /// `helm template` with `--set` values; every rendered document.
    fn render(sets: &[&str]) -> Vec<Value> {
        let mut args = Vec::new();
        for s in sets {
            args.push("--set");
            args.push(s);
        }
        render_args(&args)
    }

    /// `helm template lw <chart> <args>`; every rendered document.
    fn render_args(extra: &[&str]) -> Vec<Value> {
        let chart = chart();
        let mut args = vec!["template", "lw", chart.to_str().unwrap_or(".")];
        args.extend_from_slice(extra);
        let out = run_helm(&args);
        assert!(
            out.status.success(),
            "helm template {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut docs = Vec::new();
        let mut current = String::new();
        for line in text.lines().chain(std::iter::once("---")) {
            if line == "---" {
                if !current.trim().is_empty() {
                    let v: Value = serde_yaml_ng::from_str(&current)
                        .unwrap_or_else(|e| panic!("{e}:\n{current}"));
                    if !v.is_null() {
                        docs.push(v);
                    }
                }
                current.clear();
            } else {
                current.push_str(line);
                current.push('\n');
            }
        }
        docs
    }

    fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    fn kinds(docs: &[Value]) -> BTreeSet<String> {
        docs.iter()
            .filter_map(|d| d["kind"].as_str().map(str::to_string))
            .collect()
    }

    /// `selector` (a label map) selects an object with `labels`.
    fn selects(selector: &Value, labels: &Value) -> bool {
        selector
            .as_object()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k] == *v))
    }

    /// The container's environment, secrets resolved from the rendered Secrets.
    fn container_env(docs: &[Value], container: &Value) -> Vec<(String, String)> {
        container["env"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let name = e["name"].as_str().unwrap_or("").to_string();
                let value = if let Some(v) = e["value"].as_str() {
                    v.to_string()
                } else {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    let secret = find(docs, "Secret", r["name"].as_str().unwrap_or(""));
                    let b64 = secret["data"][r["key"].as_str().unwrap_or("")]
                        .as_str()
                        .unwrap_or_else(|| panic!("{name}: no such key in the Secret"));
                    base64_decode(b64)
                };
                (name, value)
            })
            .collect()
    }

    fn base64_decode(s: &str) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes().filter(|c| *c != b'=') {
            let v = A
                .iter()
                .position(|a| *a == c)
                .unwrap_or_else(|| panic!("bad base64 {s}")) as u32;
            bits = bits << 6 | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
                bits &= (1 << n) - 1;
            }
        }
        String::from_utf8(out).unwrap_or_else(|e| panic!("secret not UTF-8: {e}"))
    }

    /// Checks a workload (Deployment) as users rely on it; returns its container.
    fn check_workload(docs: &[Value], name: &str, role: &str, config_map: &str) -> Value {
        let d = find(docs, "Deployment", name);
        let pod = &d["spec"]["template"];
        let labels = &pod["metadata"]["labels"];
        assert!(
            selects(&d["spec"]["selector"]["matchLabels"], labels),
            "{name}: selector"
        );
        assert_eq!(labels["app.kubernetes.io/component"], role);
        let c = &pod["spec"]["containers"][0];
        let args = str_list(&c["args"]);
        assert_eq!(
            args,
            [
                "run",
                "--config",
                "/etc/lakewire/lakewire.toml",
                "--role",
                role
            ]
        );
        // The configuration file mounted at --config comes from the ConfigMap the chart renders.
        let mount = c["volumeMounts"]
            .as_array()
            .and_then(|ms| {
                ms.iter()
                    .find(|m| m["mountPath"] == "/etc/lakewire/lakewire.toml")
            })
            .unwrap_or_else(|| panic!("no config mount"))
            .clone();
        let volume = pod["spec"]["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == mount["name"]))
            .unwrap_or_else(|| panic!("no config volume"))
            .clone();
        assert_eq!(volume["configMap"]["name"], config_map);
        assert_eq!(mount["subPath"], "lakewire.toml");
        // Non-root, probes on the named port.
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
        let port = &c["ports"][0];
        assert_eq!(port["name"], "http");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            assert_eq!(c[probe]["httpGet"]["port"], "http", "{name} {probe}");
        }
        // Services select these pods on a port they name.
        let services: Vec<&Value> = docs
            .iter()
            .filter(|x| x["kind"] == "Service" && selects(&x["spec"]["selector"], labels))
            .collect();
        assert!(!services.is_empty(), "{name}: no Service selects its pods");
        for s in services {
            assert_eq!(s["spec"]["ports"][0]["targetPort"], "http");
        }
        // A PodDisruptionBudget covers them.
        assert!(
            docs.iter().any(|x| x["kind"] == "PodDisruptionBudget"
                && selects(&x["spec"]["selector"]["matchLabels"], labels)),
            "{name}: no PDB"
        );
        c.clone()
    }

    /// The ConfigMap's lakewire.toml with the container's environment passes `lakewire check`,
    /// and the gateway listens on the container port; returns `check`'s output.
    fn check_config(docs: &[Value], config_map: &str, container: &Value) -> String {
        let toml = find(docs, "ConfigMap", config_map)["data"]["lakewire.toml"]
            .as_str()
            .unwrap_or_else(|| panic!("no lakewire.toml"))
            .to_string();
        let env: Vec<(String, String)> = container_env(docs, container)
            .into_iter()
            .filter(|(k, _)| k.starts_with("LAKEWIRE_"))
            .collect();
        assert_documented(&env, config_map);
        let out = lakewire_check(&toml, &env).unwrap_or_else(|e| panic!("{config_map}: {e}"));
        let port = container["ports"][0]["containerPort"].to_string();
        assert!(
            out.contains(&format!("listening on 0.0.0.0:{port}")),
            "{out}"
        );
        out
    }

    #[test]
    fn default_chart_renders_gateways_users_can_rely_on() -> anyhow::Result<()> {
        let docs = render(&[]);
        assert_eq!(
            kinds(&docs),
            ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
        let c = check_workload(&docs, "lw-lakewire", "gateway", "lw-lakewire");
        check_config(&docs, "lw-lakewire", &c);
        let d = find(&docs, "Deployment", "lw-lakewire");
        assert_eq!(d["spec"]["replicas"], 2);
        // Termination grace: longer than the preStop pause plus the shutdown grace the gateway
        // really uses (the variable `lakewire check` just accepted).
        let env: BTreeMap<_, _> = container_env(&docs, &c).into_iter().collect();
        let grace_ms: u64 = env["LAKEWIRE_WEBSOCKET__SHUTDOWN_GRACE_MS"]
            .parse()
            .context("grace")?;
        let pre_stop: u64 = c["lifecycle"]["preStop"]["exec"]["command"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("preStop sleep")?;
        let tgps = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .context("tgps")?;
        assert!(
            tgps * 1000 > pre_stop * 1000 + grace_ms,
            "{tgps}s vs {pre_stop}s + {grace_ms}ms"
        );
        // The Service port reaches the container port by name.
        let s = find(&docs, "Service", "lw-lakewire");
        assert_eq!(s["spec"]["ports"][0]["name"], "http");
        // And a chart that would cut sessions short is refused.
        let out = run_helm(&[
            "template",
            "lw",
            chart().to_str().unwrap_or("."),
            "--set",
            "gateway.terminationGracePeriodSeconds=8",
        ]);
        assert!(
            !out.status.success(),
            "a grace period shorter than the shutdown grace rendered"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("terminationGracePeriodSeconds"));
        Ok(())
    }

    #[test]
    fn chart_with_sink_ingress_jwt_autoscaling_and_monitoring() -> anyhow::Result<()> {
        let secret = "an-hs256-secret-of-more-than-32-bytes!";
        let docs = render(&[
            "sink.enabled=true",
            "ingress.enabled=true",
            "serviceMonitor.enabled=true",
            "autoscaling.enabled=true",
            "autoscaling.connections.enabled=true",
            "jwt.enabled=true",
            &format!("jwt.hs256Secret={secret}"),
        ]);
        for kind in [
            "Ingress",
            "ServiceMonitor",
            "HorizontalPodAutoscaler",
            "Secret",
        ] {
            assert!(kinds(&docs).contains(kind), "{kind}");
        }
        let gw = check_workload(&docs, "lw-lakewire", "gateway", "lw-lakewire");
        // JWT from the Secret: the gateway starts in jwt mode with that key.
        let env: BTreeMap<_, _> = container_env(&docs, &gw).into_iter().collect();
        assert_eq!(
            env.get("LAKEWIRE_AUTH__HS256_SECRET").map(String::as_str),
            Some(secret)
        );
        assert_eq!(
            env.get("LAKEWIRE_AUTH__MODE").map(String::as_str),
            Some("jwt")
        );
        check_config(&docs, "lw-lakewire", &gw);
        let sink = check_workload(&docs, "lw-lakewire-sink", "sink", "lw-lakewire-sink");
        // The sink's configuration is the gateway's plus [sink].
        let sink_toml = find(&docs, "ConfigMap", "lw-lakewire-sink")["data"]["lakewire.toml"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let (base, sink_part) = split_sink(&sink_toml);
        assert!(
            sink_part.contains("[sink]") && sink_part.contains("group_id"),
            "{sink_toml}"
        );
        let gw_toml = find(&docs, "ConfigMap", "lw-lakewire")["data"]["lakewire.toml"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert_eq!(base.trim(), gw_toml.trim());
        let sink_env: Vec<(String, String)> = container_env(&docs, &sink)
            .into_iter()
            .filter(|(k, _)| k.starts_with("LAKEWIRE_"))
            .collect();
        lakewire_check(&base, &sink_env).context("sink configuration without [sink]")?;
        // Autoscaling owns the replica count, and targets the gateway.
        let d = find(&docs, "Deployment", "lw-lakewire");
        assert!(
            d["spec"]["replicas"].is_null(),
            "replicas set alongside an HPA"
        );
        let hpa = find(&docs, "HorizontalPodAutoscaler", "lw-lakewire");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "lw-lakewire");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        let metrics: Vec<String> = hpa["spec"]["metrics"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| m["type"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(metrics, ["Resource", "Pods"]);
        assert_eq!(
            hpa["spec"]["metrics"][1]["pods"]["metric"]["name"],
            "lakewire_ws_connections"
        );
        // Ingress: to the gateway Service's named port, with WebSocket-length timeouts.
        let ing = find(&docs, "Ingress", "lw-lakewire");
        let backend = &ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
        assert_eq!(backend["name"], "lw-lakewire");
        let svc = find(&docs, "Service", "lw-lakewire");
        assert_eq!(backend["port"]["name"], svc["spec"]["ports"][0]["name"]);
        let timeout: u64 =
            ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .context("read timeout")?;
        assert!(
            timeout * 1000 > 60_000,
            "proxy timeout {timeout}s below websocket.idle_timeout_ms"
        );
        // ServiceMonitor scrapes /metrics of both Services' pods.
        let sm = find(&docs, "ServiceMonitor", "lw-lakewire");
        let scraped: Vec<&Value> = docs
            .iter()
            .filter(|x| {
                x["kind"] == "Service"
                    && selects(
                        &sm["spec"]["selector"]["matchLabels"],
                        &x["metadata"]["labels"],
                    )
            })
            .collect();
        assert_eq!(scraped.len(), 2, "gateway and sink Services");
        assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
        for s in scraped {
            assert_eq!(
                s["spec"]["ports"][0]["name"],
                sm["spec"]["endpoints"][0]["port"]
            );
        }
        Ok(())
    }

    #[test]
    fn chart_with_an_rs256_key_mounts_it_where_the_gateway_reads_it() -> anyhow::Result<()> {
        let fixture = root().join("integration-tests/fixtures/auth/rsa-public.pem");
        let pem = std::fs::read_to_string(&fixture)?;
        let docs = render_args(&[
            "--set",
            "jwt.enabled=true,jwt.algorithm=rs256",
            "--set-file",
            &format!("jwt.publicKeyPem={}", fixture.display()),
        ]);
        let pod = &find(&docs, "Deployment", "lw-lakewire")["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let env: BTreeMap<_, _> = container_env(&docs, c).into_iter().collect();
        assert_eq!(
            env.get("LAKEWIRE_AUTH__MODE").map(String::as_str),
            Some("jwt")
        );
        let file = env
            .get("LAKEWIRE_AUTH__RS256_PUBLIC_KEY_FILE")
            .context("no RS256 key file variable")?;
        // The file is in a directory mounted from the Secret that holds the key.
        let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
        let mount = mounts
            .iter()
            .find(|m| {
                m["mountPath"]
                    .as_str()
                    .is_some_and(|p| file.starts_with(&format!("{p}/")))
            })
            .context("the key file's directory is not mounted")?;
        let volume = pod["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == mount["name"]))
            .context("no volume for the key mount")?;
        let secret = find(
            &docs,
            "Secret",
            volume["secret"]["secretName"].as_str().unwrap_or(""),
        );
        let key = file.rsplit('/').next().unwrap_or("");
        let data = secret["data"][key]
            .as_str()
            .context("the Secret lacks the key file")?;
        assert_eq!(base64_decode(data), pem);
        // The gateway starts with that key (the file written here instead of in the pod).
        let here = lakewire_integration_tests::process::temp_path("rs256.pem");
        std::fs::write(&here, base64_decode(data))?;
        let toml = find(&docs, "ConfigMap", "lw-lakewire")["data"]["lakewire.toml"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let vars: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with("LAKEWIRE_"))
            .map(|(k, v)| {
                let v = if v == file {
                    here.display().to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        let checked = lakewire_check(&toml, &vars);
        let _ = std::fs::remove_file(&here);
        checked?;
        Ok(())
    }

    #[test]
    fn chart_sink_configuration_passes_lakewire_check() -> anyhow::Result<()> {
        let docs = render(&["sink.enabled=true"]);
        let sink =
            find(&docs, "Deployment", "lw-lakewire-sink")["spec"]["template"]["spec"]["containers"]
                [0]
            .clone();
        let toml = find(&docs, "ConfigMap", "lw-lakewire-sink")["data"]["lakewire.toml"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let env: Vec<(String, String)> = container_env(&docs, &sink)
            .into_iter()
            .filter(|(k, _)| k.starts_with("LAKEWIRE_"))
            .collect();
        assert_documented(&env, "sink");
        lakewire_check(&toml, &env)?;
        Ok(())
    }

    #[test]
    fn chart_passes_helm_lint() -> anyhow::Result<()> {
        let chart = chart();
        for sets in [
            &[][..],
            &[
                "sink.enabled=true,ingress.enabled=true,serviceMonitor.enabled=true,autoscaling.enabled=true,jwt.enabled=true,jwt.algorithm=rs256,jwt.publicKeyPem=x",
            ][..],
        ] {
            let mut args = vec!["lint", "--strict", chart.to_str().unwrap_or(".")];
            for s in sets {
                args.push("--set");
                args.push(s);
            }
            let out = run_helm(&args);
            assert!(
                out.status.success(),
                "helm lint {sets:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

#[test]
fn dashboard_and_alert_queries_are_valid_promql() -> anyhow::Result<()> {
    let (dashboard, alerts) = lakewire_integration_tests::monitoring::monitoring_queries()?;
    for expr in dashboard.iter().chain(&alerts) {
        // Grafana fills in its variables before Prometheus sees the query.
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        if let Err(e) = promql_parser::parser::parse(&q) {
            anyhow::bail!("not PromQL: {expr}: {e}");
        }
    }
    // Alerts must compare or select something that can become empty; a bare metric would fire
    // for every series.
    for expr in &alerts {
        assert!(
            [">", "<", "==", "!="].iter().any(|op| expr.contains(op)),
            "alert `{expr}` has no condition"
        );
    }
    // The dashboard's instance variable is one the gateway's metrics carry.
    let d: Value = serde_json::from_str(&read("deploy/grafana/lakewire.json"))?;
    let vars = str_list(&Value::Array(
        d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|v| v["name"].clone())
            .collect(),
    ));
    assert_eq!(vars, ["datasource", "instance"]);
    Ok(())
}
