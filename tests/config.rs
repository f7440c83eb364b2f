//! Configuration loading: every problem reported at once, each with its TOML
//! path; env expansion; the shipped configuration files are valid.

use std::path::Path;

use h3gate::config::{Config, ConfigError};

fn no_env(_: &str) -> Option<String> {
    None
}

fn problems(text: &str) -> Vec<String> {
    let empty = tempfile::tempdir().unwrap();
    match Config::from_toml(text, empty.path(), &no_env) {
        Ok(_) => panic!("expected the configuration to be refused"),
        Err(e @ ConfigError::Invalid(_)) => e.problems().iter().map(|p| p.to_string()).collect(),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

const VALID_TAIL: &str = r#"
[tls]
generate_dev_cert = true

[auth]
required = false

[[providers]]
name = "mock"
kind = "mock"

[[routes]]
model = "*"
targets = ["mock"]
"#;

#[test]
fn every_bad_key_is_named_by_its_path() {
    let text = format!(
        r#"
[server]
listn = "127.0.0.1:1"
shutdown_timeout = "soon"

[quic]
stream_receive_window = "6XB"
max_concurrent_uni_streams = 2
congestion = "vegas"

[http]
keep_alive = "yes"

[unknown_section]
a = 1

[[providers]]
name = "up"
kind = "openai"
base_url = "not a url"
timeouts = {{ first_byt = "1s" }}

[[routes]]
model = "gpt-*"
targets = ["up", "missing"]
{VALID_TAIL}"#
    );
    let found = problems(&text);
    let expect = [
        "server.listn: unknown key",
        "server.shutdown_timeout: invalid duration",
        "quic.stream_receive_window: invalid size",
        "quic.congestion: unknown variant `vegas`",
        "quic.max_concurrent_uni_streams: must be at least 3",
        "http.keep_alive: invalid type",
        "unknown_section: unknown section",
        "providers[0].timeouts.first_byt: unknown key",
        "routes[0].targets[1]: no provider named \"missing\"",
    ];
    for e in expect {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "missing {e:?} in {found:#?}"
        );
    }
}

/// The mock's test-only panic is armed from the test harness, never from a
/// configuration: the schema has no key for it.
#[test]
fn no_configuration_key_arms_the_mock_panic() {
    let text = r#"
[tls]
generate_dev_cert = true

[[providers]]
name = "mock"
kind = "mock"
mock = { panic_on_model = "mock-boom" }

[[routes]]
model = "*"
targets = ["mock"]
"#;
    let found = problems(text);
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("providers[0].mock.panic_on_model: unknown key")),
        "{found:#?}"
    );
}

#[test]
fn semantic_problems_are_all_reported() {
    let text = r#"
[quic]
stream_receive_window = "16MB"
receive_window = "8MB"
max_concurrent_uni_streams = 2
keep_alive_interval = "1m"
idle_timeout = "30s"

[[providers]]
name = "up"
kind = "openai"
base_url = "ftp://example.invalid"

[[providers]]
name = "up"
kind = "mock"

[[routes]]
model = "gpt-*"
targets = ["nowhere"]

[[routes]]
model = "gpt-*"
targets = []
"#;
    let found = problems(text);
    for e in [
        "tls.cert: file",
        "tls.key: file",
        "quic.receive_window: must be at least",
        "quic.max_concurrent_uni_streams: must be at least 3",
        "quic.keep_alive_interval",
        "providers[0].base_url: must be an http",
        "providers[1].name: duplicate",
        "routes[0].targets[0]: no provider named",
        "routes[1].model: duplicate",
        "routes[1].targets: needs at least one",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "missing {e:?} in {found:#?}"
        );
    }
}

#[test]
fn env_expansion_and_missing_variables() {
    let text = format!(
        r#"
[server]
listen = "${{LISTEN:-127.0.0.1:9443}}"
{VALID_TAIL}
[[providers]]
name = "openai"
kind = "openai"
api_key = "${{OPENAI_API_KEY}}"
"#
    );
    let env = |k: &str| (k == "OPENAI_API_KEY").then(|| "test-key-not-real".to_string());
    let c = Config::from_toml(&text, Path::new("."), &env).unwrap();
    assert_eq!(c.server.listen.first().unwrap().port(), 9443);
    assert_eq!(c.providers[1].api_key.expose(), "test-key-not-real");
    assert!(
        !c.to_redacted_toml().contains("test-key-not-real"),
        "check output redacts secrets"
    );

    let found = problems(&text);
    assert!(
        found.iter().any(|f| f
            .starts_with("providers[1].api_key: environment variable OPENAI_API_KEY is not set")),
        "{found:#?}"
    );
}

#[test]
fn invalid_toml_is_reported() {
    let found = problems("[server\nlisten = 1");
    assert!(found[0].contains("not valid TOML"), "{found:?}");
}

#[test]
fn shipped_configurations_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Config::load(&root.join("config.toml")).expect("config.toml is valid");
    // The production example needs its keys and certificate from the environment.
    let text = std::fs::read_to_string(root.join("deploy/h3gate.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in ["cert.pem", "key.pem", "keys.json"] {
        std::fs::write(dir.path().join(f), "").unwrap();
    }
    let env = |k: &str| match k {
        "H3GATE_TLS_DIR" | "H3GATE_STATE_DIR" => Some(dir.path().display().to_string()),
        "H3GATE_ADMIN_TOKEN" => Some("test-admin-token-not-real-0123".into()),
        k if k.ends_with("_API_KEY") => Some("test-key-not-real".into()),
        _ => None,
    };
    let c =
        Config::from_toml(&text, root, &env).unwrap_or_else(|e| panic!("deploy/h3gate.toml: {e}"));
    assert_eq!(c.server.listen.first().unwrap().port(), 443);
}

#[test]
fn provider_kinds_default_their_base_url_and_check_headers() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[[providers]]
name = "claude"
kind = "anthropic"

[[providers]]
name = "local"
kind = "ollama"
{VALID_TAIL}"#
    );
    let c = Config::from_toml(&text, dir.path(), &no_env).unwrap();
    assert_eq!(c.providers[0].base_url(), "https://api.anthropic.com/v1");
    assert_eq!(c.providers[0].anthropic_version, "2023-06-01");
    assert_eq!(c.providers[0].default_max_tokens, 4096);
    assert_eq!(c.providers[1].base_url(), "http://127.0.0.1:11434/v1");

    let bad = format!(
        r#"
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "ftp://example.com"
default_max_tokens = 0
headers = {{ "bad header" = "x", "x-ok" = "line\nbreak" }}
{VALID_TAIL}"#
    );
    let p = problems(&bad);
    for path in [
        "providers[0].base_url",
        "providers[0].default_max_tokens",
        "providers[0].headers.bad header",
        "providers[0].headers.x-ok",
    ] {
        assert!(p.iter().any(|l| l.contains(path)), "{path} in {p:?}");
    }
}

#[test]
fn listen_takes_one_address_or_a_list() {
    let load = |server: &str, admin: &str| {
        let text = format!("[server]\nlisten = {server}\n[admin]\nlisten = {admin}\n{VALID_TAIL}");
        Config::from_toml(&text, Path::new("."), &no_env)
    };
    let one = load("\"127.0.0.1:9443\"", "\"127.0.0.1:9901\"").unwrap();
    assert_eq!(one.server.listen.iter().count(), 1);
    let both = load(
        "[\"127.0.0.1:9443\", \"[::1]:9443\"]",
        "[\"127.0.0.1:9901\", \"[::1]:9901\"]",
    )
    .unwrap();
    let addrs: Vec<String> = both.server.listen.iter().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["127.0.0.1:9443", "[::1]:9443"]);
    assert_eq!(both.admin.listen.iter().count(), 2);
    // The redacted config prints what it read, and reads back the same.
    let printed = both.to_redacted_toml();
    assert!(printed.contains("\"[::1]:9443\""), "{printed}");

    let found = problems(&format!("[server]\nlisten = []\n{VALID_TAIL}"));
    assert!(
        found.iter().any(|f| f.starts_with("server.listen")),
        "{found:?}"
    );
    let found = problems(&format!(
        "[server]\nlisten = [\"127.0.0.1:9443\", \"[::1]:9443\"]\n[admin]\nlisten = \"[::1]:9443\"\n{VALID_TAIL}"
    ));
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("admin.listen: must differ")),
        "{found:?}"
    );
    let found = problems(&format!("[server]\nlisten = \"localhost\"\n{VALID_TAIL}"));
    assert!(
        found.iter().any(|f| f.contains("invalid socket address")),
        "{found:?}"
    );
}

/// `[[prices]]`, `[[teams]]` and `[spend]` are read (they were refused as
/// unknown sections before), checked key by key, and printed back by
/// `to_redacted_toml`; `[spend] file` is relative to the config file.
#[test]
fn spend_sections_are_read() {
    let text = format!(
        r#"
[spend]
file = "state/spend.json"
retention = "30d"

[[prices]]
model = "gpt-4o*"
input = 2.5
output = 10.0
cached_input = 1.25

[[teams]]
name = "research"
budget = 100.0
budget_period = "1d"
{VALID_TAIL}"#
    );
    let dir = tempfile::tempdir().unwrap();
    let c = Config::from_toml(&text, dir.path(), &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.prices.len(), 1);
    assert_eq!(
        (
            c.prices[0].model.as_str(),
            c.prices[0].cached_input,
            c.prices[0].cache_write
        ),
        ("gpt-4o*", Some(1.25), None)
    );
    assert_eq!(c.teams[0].name, "research");
    assert_eq!(c.teams[0].budget, Some(100.0));
    assert_eq!(c.spend.file, Some(dir.path().join("state/spend.json")));
    let printed = c.to_redacted_toml();
    assert!(
        printed.contains("[[prices]]") && printed.contains("[[teams]]"),
        "{printed}"
    );

    let bad = text.replace("cached_input = 1.25", "cached = 1.25");
    let found = problems(&bad);
    assert!(
        found.iter().any(|p| p.starts_with("prices[0].cached")),
        "{found:?}"
    );
}

/// `[[teams]]` and `[[prices]]` are checked, each problem at its path:
/// team names unique and valid, budgets greater than zero; prices' model
/// required, prices finite and zero or more.
#[test]
fn spend_sections_are_checked() {
    let bad = format!(
        r#"
[[teams]]
name = "research"
budget = 0.0

[[teams]]
name = "research"
budget = -5.0
budget_tokens = 0

[[teams]]
name = "has space"
budget = inf

[[teams]]
name = ""
budget = nan

[[teams]]
name = "periodic"
budget = 1.0
budget_period = "1w"

[[prices]]
model = ""
input = -1.0
output = inf

[[prices]]
model = "ok-*"
input = 1.0
output = 2.0
cached_input = nan
cache_write = -0.5
{VALID_TAIL}"#
    );
    let found = problems(&bad);
    for e in [
        "teams[0].budget: must be a number of USD greater than zero",
        "teams[1].name: duplicate team \"research\"",
        "teams[1].budget: must be",
        "teams[1].budget_tokens: must be greater than zero",
        "teams[2].name: must be letters",
        "teams[2].budget: must be",
        "teams[3].name: must be letters",
        "teams[3].budget: must be",
        "teams[4].budget_period",
        "prices[0].model: is required",
        "prices[0].input: must be a finite number",
        "prices[0].output: must be a finite number",
        "prices[1].cached_input: must be a finite number",
        "prices[1].cache_write: must be a finite number",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "missing {e:?} in {found:#?}"
        );
    }
    assert!(
        !found.iter().any(|f| f.starts_with("teams[0].name")),
        "the first of two is not the duplicate: {found:#?}"
    );
}
