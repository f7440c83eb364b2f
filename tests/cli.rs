//! The `h3gate` binary's key commands on a fresh installation: the first
//! key can be created before any keys file exists, from a configuration
//! whose other sections are not ready yet (an unset `${VAR}`, missing
//! certificates). `h3gate check` names the route targets without a price.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An environment variable no test environment sets.
const UNSET: &str = "H3GATE_TEST_SURELY_UNSET_VAR";

fn h3gate(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_h3gate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove(UNSET)
        .env_remove("H3GATE_CONFIG")
        .output()
        .unwrap()
}

/// A production-like configuration before first start: keys file, TLS
/// files and state directory all absent; a provider key from the environment.
fn fresh_install(auth: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("h3gate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"
generate_dev_cert = false

[auth]
{auth}

[audit]
file = "state/audit.log"

[[providers]]
name = "openai"
kind = "openai"
api_key = "${{{UNSET}}}"

[[routes]]
model = "*"
targets = ["openai"]
"#
        ),
    )
    .unwrap();
    (dir, config)
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn the_first_key_is_created_with_the_keys_file() {
    let (dir, config) = fresh_install(r#"keys_file = "state/keys.json""#);
    let keys_file = dir.path().join("state/keys.json");
    assert!(!keys_file.exists());

    let out = h3gate(&["keys", "create", "--name", "first"], &config);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "keys create failed: {stderr}");
    assert!(
        stdout.trim().starts_with("h3g_"),
        "the key is printed: {stdout}"
    );
    assert!(
        !stderr.contains(stdout.trim()),
        "the key is not repeated on stderr"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "keys file mode {mode:o}");
    }
    let saved = std::fs::read_to_string(&keys_file).unwrap();
    assert!(saved.contains("\"first\"") && !saved.contains(stdout.trim()));
    // The CLI's audit line goes where the configuration says.
    let audit = std::fs::read_to_string(dir.path().join("state/audit.log")).unwrap();
    assert!(audit.contains("key_create"), "{audit}");

    // The other key commands work the same way.
    assert!(h3gate(&["keys", "create", "--name", "second"], &config)
        .status
        .success());
    let list = h3gate(&["keys", "list"], &config);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let listed = text(&list.stdout);
    assert!(
        listed.contains("first") && listed.contains("second"),
        "{listed}"
    );
    let revoke = h3gate(&["keys", "revoke", "first"], &config);
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
}

#[test]
fn keys_commands_still_check_the_auth_section() {
    // A variable in [auth] itself must be set: that is the file to write.
    let (_dir, config) = fresh_install(&format!(r#"keys_file = "${{{UNSET}}}/keys.json""#));
    let out = h3gate(&["keys", "create", "--name", "first"], &config);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("auth.keys_file") && stderr.contains(UNSET),
        "{stderr}"
    );
    assert!(!stderr.contains("h3gate keys create"), "{stderr}");

    // An unknown key in [auth] is still an error.
    let (_dir, config) = fresh_install("keys_file = \"keys.json\"\nkeysfile = \"x\"");
    let out = h3gate(&["keys", "list"], &config);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("auth.keysfile"),
        "{}",
        text(&out.stderr)
    );

    // No keys file configured: say how to give one.
    let (_dir, config) = fresh_install("required = false");
    let out = h3gate(&["keys", "create", "--name", "first"], &config);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--keys-file"),
        "{}",
        text(&out.stderr)
    );
}

/// `keys edit`, as the README shows it: a limit and the expiry set, then
/// cleared with "none"; the file says so each time.
#[test]
fn keys_edit_sets_and_clears_limits_and_the_expiry() {
    let (dir, config) = fresh_install(r#"keys_file = "state/keys.json""#);
    let keys_file = dir.path().join("state/keys.json");
    assert!(
        h3gate(&["keys", "create", "--name", "ci", "--rpm", "5"], &config)
            .status
            .success()
    );
    let record = || -> serde_json::Value {
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&keys_file).unwrap()).unwrap();
        file["keys"][0].clone()
    };
    let edit = |args: &[&str]| {
        let out = h3gate(&[&["keys", "edit", "ci"], args].concat(), &config);
        assert!(
            out.status.success(),
            "keys edit {args:?}: {}",
            text(&out.stderr)
        );
    };
    edit(&["--rpm", "1200", "--expires", "30d", "--max-concurrent", "4"]);
    let r = record();
    assert_eq!(
        (r["rpm"].as_u64(), r["max_concurrent"].as_u64()),
        (Some(1200), Some(4)),
        "{r}"
    );
    assert!(r["expires_at"].as_u64().is_some(), "{r}");
    edit(&["--rpm", "none", "--expires", "none"]);
    let r = record();
    assert!(r["rpm"].is_null() && r["expires_at"].is_null(), "{r}");
    assert_eq!(r["max_concurrent"].as_u64(), Some(4), "untouched: {r}");
    let bad = h3gate(&["keys", "edit", "ci", "--rpm", "lots"], &config);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("--rpm"), "{}", text(&bad.stderr));
}

/// A spend file (as the gateway writes it) beside a configuration naming it
/// relatively: alice (team eng) and bob, on the 1st and 2nd of December.
fn spend_install() -> (tempfile::TempDir, PathBuf) {
    use h3gate::spend::{History, Spent, Usage};
    let (dir, config) = fresh_install("keys_file = \"keys.json\"");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[spend]\nfile = \"state/spend.json\"\n");
    std::fs::write(&config, text).unwrap();
    let dec_1 = 1_796_083_200; // 2026-12-01T00:00:00Z
    let h = History::default();
    for (at, key, team, model, cost) in [
        (dec_1 + 3600, "alice", Some("eng"), "gpt-4o", 2_000_000_000),
        (dec_1 + 3700, "alice", Some("eng"), "claude", 500_000_000),
        (dec_1 + 86_400 + 60, "bob", None, "gpt-4o", 250_000_000),
    ] {
        h.record(&Spent {
            at,
            key: Some(key.into()),
            team: team.map(Into::into),
            model: model.into(),
            provider: "up".into(),
            usage: Usage {
                input: 1000,
                output: 100,
                cached_input: 200,
                cache_write: 0,
            },
            cost,
        });
    }
    let saved = h3gate::usage::file::Saved {
        version: h3gate::usage::file::VERSION,
        buckets: h.buckets(),
        ..Default::default()
    };
    h3gate::usage::file::write(&dir.path().join("state/spend.json"), &saved).unwrap();
    (dir, config)
}

#[test]
fn usage_prints_the_spend_file_as_a_table_or_the_apis_json() {
    let (_dir, config) = spend_install();
    let range = ["--from", "2026-12-01", "--to", "2026-12-03"];
    let out = h3gate(
        &[&["usage", "--group-by", "key"][..], &range].concat(),
        &config,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "usage from 2026-12-01T00:00:00Z to 2026-12-03T00:00:00Z"
    );
    assert!(
        lines[1].starts_with("KEY") && lines[1].contains("COST_USD"),
        "{table}"
    );
    let alice: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        alice,
        ["alice", "2", "2000", "200", "400", "0", "2.500000"],
        "{table}"
    );
    assert!(lines[3].starts_with("bob "), "{table}");
    let total: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(total, ["TOTAL", "3", "3000", "300", "600", "0", "2.750000"]);

    // --json: the answer of GET /admin/usage.
    let args = [
        &["usage", "--json", "--team", "eng", "--group-by", "model"][..],
        &range,
    ]
    .concat();
    let out = h3gate(&args, &config);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["group_by"], "model");
    assert_eq!(json["team"], "eng");
    assert_eq!(json["from"], "2026-12-01T00:00:00Z");
    let rows: Vec<(&str, f64)> = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap(),
                r["cost_usd"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [("gpt-4o", 2.0), ("claude", 0.5)]);
    assert_eq!(json["total"]["requests"], 2);
    assert_eq!(json["total"]["cached_input_tokens"], 400);

    let day = h3gate(
        &[&["usage", "--group-by", "day", "--key", "bob"][..], &range].concat(),
        &config,
    );
    let day = text(&day.stdout);
    assert!(
        day.lines().nth(2).unwrap().starts_with("2026-12-02 "),
        "{day}"
    );
}

#[test]
fn usage_names_what_is_not_right() {
    let (_dir, config) = spend_install();
    let out = h3gate(&["usage", "--from", "last week"], &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--from: \"last week\" is not a time"),
        "{}",
        text(&out.stderr)
    );
    let out = h3gate(&["usage", "--group-by", "hour"], &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--group-by:"),
        "{}",
        text(&out.stderr)
    );
    // No [spend] file: the history is only in the running gateway.
    let (_dir, plain) = fresh_install("keys_file = \"keys.json\"");
    let out = h3gate(&["usage"], &plain);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("sets no [spend] file"),
        "{}",
        text(&out.stderr)
    );
    // A spend file that is not one is an error, not an empty answer.
    std::fs::write(_dir.path().join("spend.json"), "not json").unwrap();
    let mut t = std::fs::read_to_string(&plain).unwrap();
    t.push_str("\n[spend]\nfile = \"spend.json\"\n");
    std::fs::write(&plain, t).unwrap();
    let out = h3gate(&["usage"], &plain);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a spend file"),
        "{}",
        text(&out.stderr)
    );
}

/// `h3gate check` warns about every route target whose model has no price
/// (its requests would count as costing 0), says once that glob routes'
/// client models cannot be priced in advance, leaves mock targets out (they
/// cost nothing), and names where the bundled prices come from; a
/// `[[prices]]` entry silences the warning. The configuration stays valid.
#[test]
fn check_names_the_models_without_a_price() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("h3gate.toml");
    let write = |prices: &str| {
        let text = format!(
            r#"
[tls]
generate_dev_cert = true
[auth]
required = false
{prices}
[[providers]]
name = "local"
kind = "ollama"
[[providers]]
name = "oa"
kind = "openai"
api_key = "test-placeholder"
[[providers]]
name = "m"
kind = "mock"
[[routes]]
model = "llama*"
targets = [{{ provider = "local", model = "llama3" }}, "m"]
[[routes]]
model = "gpt-4o"
targets = ["oa"]
[[routes]]
model = "*"
targets = ["oa"]
[[routes]]
model = "mock-gpt"
targets = ["m"]
"#
        );
        std::fs::write(&config, text).unwrap();
    };
    write("");
    let out = h3gate(&["check"], &config);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "unpriced models are no error: {stderr}"
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning:")).collect();
    assert_eq!(
        warnings,
        [
            r#"h3gate: warning: no price for model "llama3" (route "llama*", provider "local"): its requests count as costing 0; add [[prices]]"#
        ],
        "gpt-4o has a bundled price; mock targets are left out: {stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("h3gate: note: prices: ")
                && l.contains(" bundled models from litellm ")
                && l.contains("model_prices_and_context_window_backup.json")),
        "{stderr}"
    );
    let glob_notes = stderr
        .lines()
        .filter(|l| l.contains("client's model"))
        .count();
    assert_eq!(glob_notes, 1, "{stderr}");
    assert!(
        stderr.contains(r#"note: route "*" forwards the client's model"#),
        "{stderr}"
    );

    write("[[prices]]\nmodel = \"llama*\"\ninput = 0.1\noutput = 0.2\n");
    let out = h3gate(&["check"], &config);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning:"), "priced now: {stderr}");
    assert!(stderr.contains("; 1 configured ([[prices]])"), "{stderr}");
}

/// `keys create --team --budget --budget-tokens --budget-period`, `keys
/// list` showing them, `keys edit` changing and clearing them ("none"), a
/// warning for a team `[[teams]]` lacks, and bad values refused. The
/// README's two lines are run as written.
#[test]
fn keys_carry_a_team_and_budgets() {
    let (dir, config) = fresh_install(r#"keys_file = "state/keys.json""#);
    let keys_file = dir.path().join("state/keys.json");
    let mut text_of_config = std::fs::read_to_string(&config).unwrap();
    text_of_config.push_str("\n[[teams]]\nname = \"research\"\nbudget = 100.0\n");
    std::fs::write(&config, text_of_config).unwrap();
    let record = || -> serde_json::Value {
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&keys_file).unwrap()).unwrap();
        file["keys"][0].clone()
    };
    let run = |args: &[&str]| {
        let out = h3gate(args, &config);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stderr)
    };
    let stderr = run(&[
        "keys",
        "create",
        "--name",
        "bot",
        "--team",
        "research",
        "--budget",
        "5.00",
        "--budget-tokens",
        "2000000",
        "--budget-period",
        "1d",
    ]);
    assert!(!stderr.contains("warning"), "a known team: {stderr}");
    let r = record();
    assert_eq!(r["team"], "research", "{r}");
    assert_eq!(r["budget"], 5.0, "{r}");
    assert_eq!(r["budget_tokens"], 2_000_000, "{r}");
    assert_eq!(r["budget_period"], "1d", "{r}");
    let list = h3gate(&["keys", "list"], &config);
    let listed = text(&list.stdout);
    assert!(
        listed.contains("team=research")
            && listed.contains("budget=$5.00/1d")
            && listed.contains("budget_tokens=2000000/1d"),
        "{listed}"
    );

    // A team the configuration lacks: allowed, with a warning.
    let stderr = run(&[
        "keys",
        "edit",
        "bot",
        "--team",
        "ops",
        "--budget-period",
        "month",
    ]);
    assert!(
        stderr.contains("warning") && stderr.contains("\"ops\"") && stderr.contains("[[teams]]"),
        "{stderr}"
    );
    let r = record();
    assert_eq!(
        (r["team"].as_str(), r["budget_period"].as_str()),
        (Some("ops"), Some("month"))
    );
    run(&[
        "keys",
        "edit",
        "bot",
        "--budget",
        "10",
        "--budget-period",
        "30d",
        "--budget-tokens",
        "none",
    ]);
    run(&["keys", "edit", "bot", "--team", "none"]);
    let r = record();
    assert!(r["team"].is_null() && r["budget_tokens"].is_null(), "{r}");
    assert_eq!(
        (r["budget"].as_f64(), r["budget_period"].as_str()),
        (Some(10.0), Some("30d")),
        "{r}"
    );
    let listed = text(&h3gate(&["keys", "list"], &config).stdout);
    assert!(
        listed.contains("budget=$10.00/30d") && !listed.contains("team="),
        "{listed}"
    );

    for bad in [
        &["keys", "edit", "bot", "--budget", "0"][..],
        &["keys", "edit", "bot", "--budget=-2"],
        &["keys", "edit", "bot", "--budget", "inf"],
        &["keys", "edit", "bot", "--budget-tokens", "0"],
        &["keys", "edit", "bot", "--budget-period", "1w"],
        &["keys", "edit", "bot", "--team", "a b"],
        &[
            "keys",
            "create",
            "--name",
            "x",
            "--budget-period",
            "fortnight",
        ],
    ] {
        let out = h3gate(bad, &config);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(
            text(&out.stderr).contains("budget") || text(&out.stderr).contains("team"),
            "{bad:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(record()["budget"], 10.0, "the refusals changed nothing");
}
