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

/// Runs a checking tool if it is installed; in CI it must be.
fn tool(name: &str, args: &[&str], cwd: &Path) -> Option<std::process::Output> {
    match Command::new(name).args(args).current_dir(cwd).output() {
        Ok(out) => Some(out),
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("{name} not installed: skipped (CI installs it)");
            None
        }
        Err(e) => panic!("{name} is required in CI: {e}"),
    }
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
    if let Some(out) = tool(
        "systemd-analyze",
        &["verify", "--man=no", path.to_str().unwrap()],
        dir.path(),
    ) {
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
            "Deployment",
            "Service",
            "PodDisruptionBudget"
        ]
    );

    let deployment = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
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

    let service = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Service"))
        .unwrap();
    let protocols: Vec<(i64, &str)> = service["spec"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_i64().unwrap(), p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(protocols, [(443, "TCP"), (443, "UDP")]);

    // The embedded configuration is a valid h3gate configuration.
    let config = docs[0]["data"]["h3gate.toml"].as_str().unwrap();
    let env = |k: &str| Some(format!("{k}-test-value-long-enough"));
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
    h3gate::config::Config::from_toml(&text, dir.path(), &env)
        .unwrap_or_else(|e| panic!("ConfigMap config: {e}"));
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
        !volumes.is_empty() && volumes.iter().all(|v| v.ends_with(":ro")),
        "config and certificate mounted read-only"
    );
    assert_eq!(svc["read_only"].as_bool(), Some(true));
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
    let admin = gw.admin.to_string();
    let ok = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_h3gate"))
            .args(["health", "--admin", &admin])
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(ok.success());

    // While draining (a stream in flight holds the drain open) the process
    // is alive, so the container health check still passes.
    let c = gw.client(common::Proto::H1).await;
    let mut stream = c
        .post_json("/v1/chat/completions", common::chat("gated", true))
        .await;
    stream.chunk().await.unwrap().unwrap();
    gw.begin_shutdown();
    let admin = gw.admin.to_string();
    let draining = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_h3gate"))
            .args(["health", "--admin", &admin])
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(draining.success(), "healthy while draining");
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
    let pod = &docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .unwrap()["spec"]["template"]["spec"];
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
