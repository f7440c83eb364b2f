//! The deployment files: the systemd unit passes `systemd-analyze verify`,
//! the YAML parses and says what it must, the Dockerfile builds the way the
//! project builds, and `h3gate health` probes a running gateway.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs a checking tool; fails with its install line when it is missing
/// (never skipped).
fn tool(name: &str, install: &str, args: &[&str], cwd: &Path) -> std::process::Output {
    let bin = common::tools::require_tool(name, install);
    Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{name} runs: {e}"))
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/h3gate.service")).unwrap();
    for needed in [
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=h3gate",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    // systemd-analyze wants the binaries the unit names to exist: point them
    // at this build in a copy.
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_h3gate");
    let copy = unit.replace("/usr/local/bin/h3gate", bin);
    let path = dir.path().join("h3gate.service");
    std::fs::write(&path, copy).unwrap();
    {
        let out = tool(
            "systemd-analyze",
            "apt-get install -y systemd",
            &["verify", "--man=no", path.to_str().unwrap()],
            dir.path(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("h3gate.service"))
            // Not having the user on this machine is expected.
            .filter(|l| !l.contains("User=") && !l.contains("Group="))
            .collect();
        assert!(
            out.status.success() || problems.is_empty(),
            "systemd-analyze verify:\n{stderr}"
        );
        assert!(problems.is_empty(), "systemd-analyze verify:\n{stderr}");
    }
    let sysctl =
        std::fs::read_to_string(root().join("deploy/systemd/99-h3gate-udp-buffers.conf")).unwrap();
    assert!(
        sysctl.contains("net.core.rmem_max = 8388608")
            && sysctl.contains("net.core.wmem_max = 8388608")
    );
}

#[test]
fn kubernetes_manifests_parse_and_harden() {
    let docs = yaml("deploy/kubernetes/h3gate.yaml");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Secret",
            "Secret",
            "Service",
            "StatefulSet",
            "Service",
            "PodDisruptionBudget"
        ]
    );

    let pod = &object(&docs, "StatefulSet", "h3gate")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"][0].as_str(),
        Some("ALL")
    );
    assert_eq!(
        c["securityContext"]["capabilities"]["add"][0].as_str(),
        Some("NET_BIND_SERVICE")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/ready")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/health")
    );

    let service = object(&docs, "Service", "h3gate");
    let protocols: Vec<(i64, &str)> = service["spec"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_i64().unwrap(), p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(protocols, [(443, "TCP"), (443, "UDP")]);

    // The embedded configuration is a valid h3gate configuration.
    kubernetes_config(&docs, &k8s_env).unwrap_or_else(|e| panic!("ConfigMap config: {e}"));
}

/// The environment a gateway pod gets (test values; pod index 2).
fn k8s_env(k: &str) -> Option<String> {
    Some(match k {
        "H3GATE_CLUSTER_SECRET" => "ab".repeat(32),
        "H3GATE_NODE_ID" => "2".into(),
        _ => format!("{k}-test-value-long-enough"),
    })
}

/// The document of `kind` named `name`.
fn object<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The ConfigMap's configuration, loaded with `env` (the files it names
/// stubbed).
fn kubernetes_config(
    docs: &[Yaml],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<h3gate::config::Config, String> {
    let config = docs[0]["data"]["h3gate.toml"].as_str().unwrap();
    let text = config
        .replace("/etc/h3gate/tls/tls.crt", "")
        .replace("/etc/h3gate/tls/tls.key", "")
        .replace("/etc/h3gate/keys/keys.json", "keys.json");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), "").unwrap();
    std::fs::write(dir.path().join("keys.json"), "").unwrap();
    let text = text
        .replace("cert = \"\"", "cert = \"c.pem\"")
        .replace("key = \"\"", "key = \"c.pem\"");
    h3gate::config::Config::from_toml(&text, dir.path(), env).map_err(|e| e.to_string())
}

/// The replicas share the cluster secret and the Valkey password from one
/// Secret whose placeholders are refused; each pod's QUIC node id is its
/// StatefulSet index; valkey.yaml is the Redis the ConfigMap names, reached
/// only by the gateway pods.
#[test]
fn kubernetes_replicas_share_one_valkey_and_number_themselves() {
    let docs = yaml("deploy/kubernetes/h3gate.yaml");
    let config = kubernetes_config(&docs, &k8s_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.cluster.node_id,
        Some(2),
        "node id from the pod index"
    );
    assert!(config.cluster.is_shared());

    let pod = &object(&docs, "StatefulSet", "h3gate")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let from: Vec<&str> = c["envFrom"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|e| e["secretRef"]["name"].as_str())
        .collect();
    assert!(from.contains(&"h3gate-cluster"), "{from:?}");
    let node = c["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("H3GATE_NODE_ID"))
        .expect("H3GATE_NODE_ID");
    assert_eq!(
        node["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.labels['apps.kubernetes.io/pod-index']")
    );

    // A forgotten placeholder stops the gateway at start, loudly.
    let secret = &object(&docs, "Secret", "h3gate-cluster")["stringData"];
    let placeholder = secret["H3GATE_CLUSTER_SECRET"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = kubernetes_config(&docs, &|k| {
        if k == "H3GATE_CLUSTER_SECRET" {
            Some(placeholder.clone())
        } else {
            k8s_env(k)
        }
    })
    .unwrap_err();
    assert!(refused.contains("cluster.secret"), "{refused}");
    assert!(secret["H3GATE_REDIS_PASSWORD"].as_str().is_some());

    let valkey = yaml("deploy/kubernetes/valkey.yaml");
    let svc = object(&valkey, "Service", "h3gate-valkey");
    let port = svc["spec"]["ports"][0]["port"].as_i64().unwrap();
    assert_eq!(
        config.cluster.redis_url,
        format!("redis://h3gate-valkey:{port}/0")
    );
    let set = &object(&valkey, "StatefulSet", "h3gate-valkey")["spec"]["template"];
    let labels = &set["metadata"]["labels"];
    assert_eq!(svc["spec"]["selector"], *labels);
    let vk = &set["spec"]["containers"][0];
    let args: Vec<&str> = vk["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    for pair in [
        ["--requirepass", "$(H3GATE_REDIS_PASSWORD)"],
        ["--maxmemory-policy", "noeviction"],
        ["--appendonly", "yes"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    let password = &vk["env"][0]["valueFrom"]["secretKeyRef"];
    assert_eq!(password["name"].as_str(), Some("h3gate-cluster"));
    assert_eq!(password["key"].as_str(), Some("H3GATE_REDIS_PASSWORD"));
    assert_eq!(
        set["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert_eq!(
        vk["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    // The memory cap fits in the container's limit.
    let cap = args[args.iter().position(|a| *a == "--maxmemory").unwrap() + 1];
    let limit = vk["resources"]["limits"]["memory"].as_str().unwrap();
    let mb = |s: &str, unit: &str| s.strip_suffix(unit).unwrap().parse::<u64>().unwrap();
    assert!(mb(cap, "mb") < mb(limit, "Mi"), "{cap} within {limit}");

    let policy = object(&valkey, "NetworkPolicy", "h3gate-valkey");
    assert_eq!(policy["spec"]["podSelector"]["matchLabels"], *labels);
    let gateway_labels = &pod_labels(&docs);
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        *gateway_labels
    );
}

fn pod_labels(docs: &[Yaml]) -> Yaml {
    object(docs, "StatefulSet", "h3gate")["spec"]["template"]["metadata"]["labels"].clone()
}

#[test]
fn compose_file_parses() {
    let docs = yaml("deploy/compose.yaml");
    let svc = &docs[0]["services"]["h3gate"];
    let ports: Vec<&str> = svc["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(ports, ["443:443/tcp", "443:443/udp"]);
    let volumes: Vec<&str> = svc["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        !volumes.is_empty()
            && volumes
                .iter()
                .filter(|v| v.starts_with("./"))
                .all(|v| v.ends_with(":ro")),
        "config and certificate mounted read-only"
    );
    assert_eq!(svc["read_only"].as_bool(), Some(true));

    // The Redis piece: a Valkey the gateway waits for and names, on an
    // internal network, published nowhere.
    let valkey = &docs[0]["services"]["valkey"];
    assert!(valkey["image"]
        .as_str()
        .unwrap()
        .starts_with("valkey/valkey:"));
    assert!(valkey["ports"].is_badvalue(), "Valkey is not published");
    assert_eq!(
        svc["environment"]["H3GATE_REDIS_URL"].as_str(),
        Some("redis://valkey:6379/0")
    );
    assert_eq!(
        svc["depends_on"]["valkey"]["condition"].as_str(),
        Some("service_healthy")
    );
    let networks = |s: &Yaml| -> Vec<String> {
        s["networks"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(|n| n.as_str().map(String::from))
            .collect()
    };
    assert_eq!(networks(valkey), ["cluster"]);
    assert!(networks(svc).contains(&"cluster".to_string()));
    assert_eq!(
        docs[0]["networks"]["cluster"]["internal"].as_bool(),
        Some(true)
    );
    assert_eq!(valkey["read_only"].as_bool(), Some(true));
    let command: Vec<&str> = valkey["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(command
        .windows(2)
        .any(|w| w == ["--maxmemory-policy", "noeviction"]));
}

#[test]
fn dockerfile_builds_like_the_project() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(text.contains("cargo build --release --locked --bin h3gate"));
    assert!(text.contains("COPY --from=build /src/target/release/h3gate /usr/local/bin/h3gate"));
    assert!(text.contains("USER nonroot"));
    assert!(text.contains("EXPOSE 443/tcp 443/udp"));
    // Everything the build needs is copied in.
    for entry in std::fs::read_dir(root()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if ["src", "Cargo.toml", "Cargo.lock", "examples", "benches"].contains(&name.as_str()) {
            assert!(
                text.contains(&format!("COPY {name}"))
                    || text.contains("COPY Cargo.toml Cargo.lock"),
                "Dockerfile does not copy {name}"
            );
        }
    }
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("name = \"h3gate\""),
        "the binary is called h3gate"
    );
    assert!(!manifest.contains("[workspace]"), "a single-crate build");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_subcommand_probes_the_admin_listener() {
    let gw = common::Gateway::start().await;
    let health = |admin: std::net::SocketAddr| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_h3gate"))
                .args(["health", "--admin", &admin.to_string()])
                .status()
                .unwrap()
        })
    };
    assert!(health(gw.admin).await.unwrap().success());

    // While draining (a stream in flight holds the drain open) the process
    // is alive, so the container health check still passes.
    let c = gw.client(common::Proto::H1).await;
    let mut stream = c
        .post_json("/v1/chat/completions", common::chat("gated", true))
        .await;
    stream.chunk().await.unwrap().unwrap();
    gw.begin_shutdown();
    assert!(
        health(gw.admin).await.unwrap().success(),
        "healthy while draining"
    );
    gw.upstream.release();

    let dead = common::dead_addr().to_string();
    let down = Command::new(env!("CARGO_BIN_EXE_h3gate"))
        .args(["health", "--admin", &dead])
        .status()
        .unwrap();
    assert!(!down.success());
}

#[test]
fn keys_cli_creates_lists_and_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.json");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_h3gate"))
            .args(args)
            .arg("--keys-file")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = run(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--scopes",
        "chat,models",
        "--models",
        "gpt-*",
        "--expires",
        "90d",
        "--rpm",
        "60",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        key.starts_with("h3g_") && key.len() == 68,
        "printed once: {key}"
    );
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&key));

    let list = String::from_utf8(run(&["keys", "list"]).stdout).unwrap();
    assert!(
        list.starts_with("ci\th3g_") && list.contains("****") && list.contains("active"),
        "{list}"
    );
    assert!(
        list.contains("scopes=chat,models") && list.contains("models=gpt-*"),
        "{list}"
    );
    assert!(!list.contains(&key[4..]), "never the secret");

    assert!(run(&["keys", "revoke", "ci"]).status.success());
    assert!(String::from_utf8(run(&["keys", "list"]).stdout)
        .unwrap()
        .contains("revoked"));
    assert!(
        !run(&["keys", "revoke", "ci"]).status.success(),
        "already revoked"
    );
    assert!(
        !run(&["keys", "create", "--name", "bad", "--scopes", "admin"])
            .status
            .success(),
        "unknown scope"
    );
}

/// `[server] drain_delay + shutdown_timeout` of a configuration text.
fn drain_budget(toml_text: &str) -> std::time::Duration {
    let table: toml::Table = toml_text.parse().expect("valid TOML");
    let server = table["server"].as_table().expect("[server]");
    let get = |key: &str, default: &str| -> std::time::Duration {
        let text = server.get(key).and_then(|v| v.as_str()).unwrap_or(default);
        text.parse::<h3gate::config::Duration>()
            .unwrap_or_else(|e| panic!("server.{key}: {e}"))
            .get()
    };
    get("drain_delay", "0s") + get("shutdown_timeout", "30s")
}

#[test]
fn stop_timeouts_cover_the_drain() {
    // The process must get longer to stop than its drain may take, or it is
    // killed mid-drain (and the streams the drain protects are cut anyway).
    let docs = yaml("deploy/kubernetes/h3gate.yaml");
    let budget = drain_budget(docs[0]["data"]["h3gate.toml"].as_str().unwrap());
    let pod = &object(&docs, "StatefulSet", "h3gate")["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap() as u64;
    assert!(
        grace > budget.as_secs(),
        "terminationGracePeriodSeconds {grace} must exceed drain_delay + shutdown_timeout ({budget:?})"
    );
    assert!(
        budget.as_secs() > 30,
        "the Kubernetes config keeps a drain_delay for endpoint removal"
    );

    let shared = std::fs::read_to_string(root().join("deploy/h3gate.toml")).unwrap();
    let budget = drain_budget(&shared);
    let unit = std::fs::read_to_string(root().join("deploy/systemd/h3gate.service")).unwrap();
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec");
    let stop: h3gate::config::Duration = stop.trim().parse().unwrap();
    assert!(
        stop.get() > budget,
        "TimeoutStopSec {stop} must exceed {budget:?}"
    );
    let compose = yaml("deploy/compose.yaml");
    let period = compose[0]["services"]["h3gate"]["stop_grace_period"]
        .as_str()
        .expect("stop_grace_period");
    let period: h3gate::config::Duration = period.parse().unwrap();
    assert!(
        period.get() > budget,
        "stop_grace_period {period} must exceed {budget:?}"
    );
}

/// Compose's interpolation of `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
/// `${VAR:?message}` and `$$` against the host environment `host`.
fn compose_interpolate(s: &str, host: &[(&str, &str)]) -> Result<String, String> {
    let get = |k: &str| host.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(format!("unterminated in {s:?}"))?;
            let expr = &body[..end];
            let value = if let Some((name, msg)) = expr.split_once(":?") {
                get(name)
                    .filter(|v| !v.is_empty())
                    .ok_or(format!("compose refuses: {name}: {msg}"))?
                    .to_string()
            } else if let Some((name, default)) = expr.split_once(":-") {
                get(name)
                    .filter(|v| !v.is_empty())
                    .unwrap_or(default)
                    .to_string()
            } else if let Some((name, default)) = expr.split_once('-') {
                get(name).unwrap_or(default).to_string()
            } else {
                get(expr).unwrap_or_default().to_string()
            };
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The compose service's filesystem and environment, rebuilt in `dir`:
/// each volume's container path maps to a directory in `dir` (bind mounts
/// get what they expect: the configuration file, a certificate; a named
/// volume starts empty), and the environment is exactly the service's
/// `environment:`, interpolated from `host`, with container paths mapped.
/// The service as [`compose_container`] rebuilt it.
#[derive(Debug)]
struct Container {
    /// The configuration file, where the container's path maps to.
    config: PathBuf,
    /// Exactly the service's environment.
    env: Vec<(String, String)>,
    /// The mounts not read-only.
    writable: Vec<PathBuf>,
}

fn compose_container(dir: &Path, host: &[(&str, &str)]) -> Result<Container, String> {
    let docs = yaml("deploy/compose.yaml");
    let svc = &docs[0]["services"]["h3gate"];
    let named = &docs[0]["volumes"];
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let mut writable = Vec::new();
    let mut config = None;
    for v in svc["volumes"].as_vec().expect("volumes") {
        let spec = v.as_str().expect("short volume syntax");
        let parts: Vec<&str> = spec.split(':').collect();
        let (source, target) = (parts[0], parts[1]);
        let read_only = parts.get(2) == Some(&"ro");
        let local = dir.join(format!("mount{}", mounts.len()));
        if let Some(rel) = source.strip_prefix("./") {
            let from = root().join("deploy").join(rel);
            if rel.ends_with(".toml") {
                std::fs::copy(&from, &local).unwrap();
                config = Some(local.clone());
            } else if rel == "tls" {
                // The operator's certificate (see the comment in compose.yaml).
                std::fs::create_dir_all(&local).unwrap();
                let dev = h3gate::tls::generate_dev_cert(&["localhost".into()]).unwrap();
                dev.write(&local, &local.join("cert.pem"), &local.join("key.pem"))
                    .unwrap();
            } else {
                panic!("unexpected bind mount {spec}");
            }
        } else {
            assert!(
                !named[source].is_badvalue(),
                "named volume {source} is declared under volumes:"
            );
            std::fs::create_dir_all(&local).unwrap();
        }
        if !read_only {
            writable.push(local.clone());
        }
        mounts.push((target.to_string(), local));
    }
    let map = |value: String| -> String {
        for (target, local) in &mounts {
            if let Some(rest) = value.strip_prefix(target.as_str()) {
                return format!("{}{rest}", local.display());
            }
        }
        value
    };
    let mut env = Vec::new();
    for (k, v) in svc["environment"].as_hash().expect("environment: a map") {
        let key = k.as_str().expect("variable name").to_string();
        let raw = match v {
            Yaml::String(s) => s.clone(),
            Yaml::Integer(i) => i.to_string(),
            other => panic!("{key}: {other:?}"),
        };
        env.push((key, map(compose_interpolate(&raw, host)?)));
    }
    Ok(Container {
        config: config.expect("the configuration is mounted"),
        env,
        writable,
    })
}

fn h3gate_in(config: &Path, env: &[(String, String)], args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_h3gate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

/// `deploy/compose.yaml` with `deploy/h3gate.toml` passes `h3gate check`
/// with exactly the environment compose gives the container, when the
/// operator sets only what the compose file says is required; the state
/// (keys, denies, audit) lands on a writable volume; the documented first
/// key one-liner works.
#[test]
fn compose_configuration_checks_with_the_compose_environment() {
    const ADMIN: (&str, &str) = ("H3GATE_ADMIN_TOKEN", "compose-test-admin-token-0123");
    // A test pattern, not a real secret.
    let secret = "5a".repeat(32);
    let cluster = ("H3GATE_CLUSTER_SECRET", secret.as_str());
    for host in [
        vec![ADMIN, cluster],
        vec![
            ADMIN,
            cluster,
            ("ANTHROPIC_API_KEY", "sk-ant-test-not-real"),
        ],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let Container {
            config,
            mut env,
            writable,
        } = compose_container(dir.path(), &host).unwrap_or_else(|e| panic!("{e}"));
        // The compose `valkey` service: a real Redis of the test's, standing
        // in for the service name the container would resolve.
        let redis = common::cluster::Redis::start();
        let url = env
            .iter_mut()
            .find(|(k, _)| k == "H3GATE_REDIS_URL")
            .expect("compose gives the gateway its Redis");
        assert_eq!(url.1, "redis://valkey:6379/0");
        url.1 = redis.url();
        // The documented first step (docker compose run --rm h3gate keys create …).
        let key = h3gate_in(&config, &env, &["keys", "create", "--name", "first"]);
        assert!(
            key.status.success(),
            "keys create: {}",
            String::from_utf8_lossy(&key.stderr)
        );
        let out = h3gate_in(&config, &env, &["check"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "h3gate check: {stderr}");
        let effective: toml::Table = String::from_utf8_lossy(&out.stdout)
            .parse()
            .expect("check prints TOML");
        for (section, key) in [
            ("auth", "keys_file"),
            ("abuse", "state_file"),
            ("audit", "file"),
        ] {
            let path = effective[section][key].as_str().unwrap();
            assert!(
                writable
                    .iter()
                    .any(|w| path.starts_with(&*w.to_string_lossy())),
                "{section}.{key} = {path} is on a writable volume"
            );
        }
        let providers: Vec<&str> = effective["providers"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        let with_key = host.iter().any(|(k, _)| *k == "ANTHROPIC_API_KEY");
        assert_eq!(
            providers.contains(&"anthropic"),
            with_key,
            "a provider without its key is left out: {providers:?}"
        );
        assert!(!providers.contains(&"openai"), "{providers:?}");
        // The replica shares its state through the compose Valkey (here
        // the test's Redis in its place).
        assert_eq!(
            effective["cluster"]["redis_url"].as_str(),
            Some(redis.url().as_str())
        );
        assert_eq!(effective["cluster"]["node_id"].as_integer(), Some(1));
        assert_ne!(
            effective["cluster"]["secret"].as_str(),
            Some(secret.as_str())
        );
    }
    // Without the one thing compose requires, compose itself refuses.
    let dir = tempfile::tempdir().unwrap();
    let refused = compose_container(dir.path(), &[]).unwrap_err();
    assert!(refused.contains("H3GATE_ADMIN_TOKEN"), "{refused}");
    let refused = compose_container(dir.path(), &[ADMIN]).unwrap_err();
    assert!(
        refused.contains("H3GATE_CLUSTER_SECRET") && refused.contains("openssl rand -hex 32"),
        "{refused}"
    );
}
