//! The `h3gate` command: parse arguments, then either serve (load the
//! configuration, start logging, run until a signal) or run one of the
//! other subcommands: `check`, `keys`, `health`, `certs`. Everything else
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use h3gate::config::Config;
use h3gate::{auth, reload, server, telemetry, tls};

/// The `keys` subcommands' work (this file parses their arguments).
#[path = "cli/keys.rs"]
mod keys_cli;
use keys_cli::{create_key, edit_key, list_keys, revoke_key, KeysFiles};

/// mimalloc instead of glibc's malloc: allocation was ~12% of the gateway's
/// CPU under load (perf), and per-request allocations are many and small.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// HTTP/3-first edge gateway for LLM APIs.
///
/// Serves an OpenAI-compatible API over HTTP/3 (QUIC), HTTP/2 and HTTP/1.1
/// on one address and forwards to upstream providers, streaming answers back.
/// With no subcommand, `h3gate` serves ./config.toml.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGINT or SIGTERM (then drain gracefully).
    Serve {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "config.toml", env = "H3GATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and print the effective configuration
    /// (secrets redacted). Exits non-zero, listing every problem, if invalid.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "config.toml", env = "H3GATE_CONFIG")]
        config: PathBuf,
    },
    /// Manage client API keys: in the keys file (`[auth] keys_file`), or,
    /// when the configuration has `[cluster] redis_url`, in the cluster's
    /// Redis (the keys file is then each replica's mirror, and is not
    /// written here). Running gateways pick changes up within a second.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        /// Configuration file naming the keys file (or the cluster).
        #[arg(
            short,
            long,
            default_value = "config.toml",
            env = "H3GATE_CONFIG",
            global = true
        )]
        config: PathBuf,
        /// The keys file itself (instead of the configuration's
        /// `auth.keys_file` or cluster).
        #[arg(long, global = true)]
        keys_file: Option<PathBuf>,
    },
    /// Print the usage history (requests, tokens, cost) per model, key,
    /// team or day: from the spend file (`[spend] file`), or, with
    /// `[cluster] redis_url`, from the cluster's Redis. The same answer as
    /// `GET /admin/usage`.
    Usage {
        /// Configuration file naming the spend file (or the cluster).
        #[arg(short, long, default_value = "config.toml", env = "H3GATE_CONFIG")]
        config: PathBuf,
        /// One key's usage (by its name).
        #[arg(long)]
        key: Option<String>,
        /// One team's usage.
        #[arg(long)]
        team: Option<String>,
        /// From (RFC 3339 or YYYY-MM-DD, UTC; default: the start of this month).
        #[arg(long)]
        from: Option<String>,
        /// Until (RFC 3339 or YYYY-MM-DD, UTC; default: now).
        #[arg(long)]
        to: Option<String>,
        /// model, key, team or day.
        #[arg(long, default_value = "model")]
        group_by: String,
        /// Print the JSON `GET /admin/usage` answers instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running gateway's admin listener for /health; exit 0 if healthy.
    /// For container health checks (the image has no curl).
    Health {
        /// Admin listener address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
    },
    /// Write a self-signed development CA (ca.pem) and a certificate
    /// (cert.pem, key.pem) it signed, for the given host names. Not for production.
    Certs {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Host names or IP addresses the certificate is valid for.
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; it is printed once and only its SHA-256 is stored.
    Create {
        #[arg(long)]
        name: String,
        /// chat, embeddings, models (default: all).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Model globs this key may use, e.g. "gpt-*,claude-*" (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Lifetime, e.g. 90d (default: no expiry).
        #[arg(long)]
        expires: Option<humantime::Duration>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u32>,
        /// Requests in flight at once.
        #[arg(long)]
        max_concurrent: Option<u32>,
        /// The team whose budget ([[teams]]) this key's spend also counts against.
        #[arg(long)]
        team: Option<String>,
        /// USD per budget period, e.g. 5.00.
        #[arg(long)]
        budget: Option<f64>,
        /// Tokens (prompt + completion) per budget period.
        #[arg(long)]
        budget_tokens: Option<u64>,
        /// 1d (calendar day, UTC), month (calendar month, UTC), or a rolling
        /// Nd or Nh, e.g. 30d (default: month).
        #[arg(long, value_parser = h3gate::spend::Period::parse)]
        budget_period: Option<h3gate::spend::Period>,
    },
    /// List keys (obfuscated ids only, never a secret).
    List,
    /// Revoke a key by name.
    Revoke { name: String },
    /// Change a key's scopes, models, expiry, limits, team or budgets
    /// ("none" clears a limit, the expiry, the team or a budget).
    Edit {
        name: String,
        /// chat, embeddings, models.
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// Model globs.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Lifetime from now, e.g. 30d, or "none".
        #[arg(long, value_parser = or_none::<humantime::Duration>)]
        expires: Option<OrNone<humantime::Duration>>,
        /// Requests per minute, or "none" (the configured default).
        #[arg(long, value_parser = or_none::<u32>)]
        rpm: Option<OrNone<u32>>,
        /// Tokens per minute, or "none".
        #[arg(long, value_parser = or_none::<u32>)]
        tpm: Option<OrNone<u32>>,
        /// Requests in flight at once, or "none".
        #[arg(long, value_parser = or_none::<u32>)]
        max_concurrent: Option<OrNone<u32>>,
        /// The key's team, or "none".
        #[arg(long, value_parser = or_none::<String>)]
        team: Option<OrNone<String>>,
        /// USD per budget period, or "none".
        #[arg(long, value_parser = or_none::<f64>)]
        budget: Option<OrNone<f64>>,
        /// Tokens per budget period, or "none".
        #[arg(long, value_parser = or_none::<u64>)]
        budget_tokens: Option<OrNone<u64>>,
        /// 1d, month, or a rolling Nd/Nh; "none": the default (month).
        #[arg(long, value_parser = or_none::<PeriodArg>)]
        budget_period: Option<OrNone<PeriodArg>>,
    },
}

/// A budget period on the command line (`Period::parse`).
#[derive(Debug, Clone, Copy)]
struct PeriodArg(h3gate::spend::Period);

impl std::str::FromStr for PeriodArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        h3gate::spend::Period::parse(s).map(PeriodArg)
    }
}

/// A value, or "none" for no value. (Not a bare `Option<Option<T>>`:
/// clap's derive reads that as a flag whose value may be left out, and
/// panicked on `keys edit --rpm 1200` expecting a `T` where the parser
/// made an `Option<T>`.)
#[derive(Debug, Clone)]
struct OrNone<T>(Option<T>);

fn or_none<T: std::str::FromStr>(text: &str) -> Result<OrNone<T>, String>
where
    T::Err: std::fmt::Display,
{
    if text == "none" {
        return Ok(OrNone(None));
    }
    text.parse()
        .map(|v| OrNone(Some(v)))
        .map_err(|e: T::Err| e.to_string())
}

fn main() -> ExitCode {
    // First thing: one crypto provider for rustls, quinn and reqwest (ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve {
        config: PathBuf::from("config.toml"),
    }) {
        Command::Serve { config } => serve(config),
        Command::Check { config } => check(config),
        Command::Certs { out, hosts } => certs(out, hosts),
        Command::Health { admin } => health(admin),
        Command::Usage {
            config,
            key,
            team,
            from,
            to,
            group_by,
            json,
        } => {
            let params = h3gate::usage::report::Params {
                key,
                team,
                from,
                to,
                group_by: Some(group_by),
            };
            h3gate::usage::cli::run(&config, &params, json)
        }
        Command::Keys {
            action,
            config,
            keys_file,
        } => keys(action, config, keys_file),
    }
}

fn serve(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("h3gate: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        let listeners = server::Listeners::bind(&config)?;
        let stop = CancellationToken::new();
        tokio::spawn(signals(stop.clone()));
        server::run(config, listeners, stop, Some(path)).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ server::StartError::DrainForced(_)) => {
            tracing::error!(error = %e, "h3gate stopped without a clean drain");
            eprintln!("h3gate: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            tracing::error!(error = %e, "h3gate could not start");
            eprintln!("h3gate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `stop` on SIGINT or SIGTERM.
async fn signals(stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("signal received");
    stop.cancel();
}

/// A tokio runtime from `builder`, every driver on; the exit code when it
/// cannot start (told on stderr).
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("h3gate: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// The same checks a reload makes (configuration, certificate, runtime
/// state), without changing anything.
fn check(path: PathBuf) -> ExitCode {
    // Building the state sets up (lazily, without connecting) the cluster's
    // Redis connection, which needs a runtime to exist.
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let _runtime = runtime.enter();
    match reload::prepare(&path, false) {
        Ok(prepared) => {
            print!("{}", prepared.state.config.to_redacted_toml());
            let state = &prepared.state;
            for line in h3gate::config::prices::report(&state.config, &state.prices) {
                eprintln!("h3gate: {line}");
            }
            eprintln!("h3gate: {} is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("h3gate: {} is invalid:", path.display());
            for p in e.problems() {
                eprintln!("  - {p}");
            }
            ExitCode::from(2)
        }
    }
}

fn certs(out: PathBuf, hosts: Vec<String>) -> ExitCode {
    let result = tls::generate_dev_cert(&hosts)
        .and_then(|c| c.write(&out, &out.join("cert.pem"), &out.join("key.pem")));
    match result {
        Ok(()) => {
            println!(
                "wrote {dir}/{ca} (trust this CA), {dir}/cert.pem and {dir}/key.pem for {hosts}",
                dir = out.display(),
                ca = tls::DEV_CA_FILE,
                hosts = hosts.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("h3gate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn health(admin: std::net::SocketAddr) -> ExitCode {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(3);
    let result = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&admin, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: h3gate\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match result {
        Ok(resp) if resp.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(resp) => {
            eprintln!("h3gate: unhealthy: {}", resp.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("h3gate: cannot reach {admin}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keys(action: KeysAction, config: PathBuf, keys_file: Option<PathBuf>) -> ExitCode {
    let files = match KeysFiles::find(&config, keys_file) {
        Ok(files) => files,
        Err(code) => return code,
    };
    let result = match action {
        KeysAction::Create {
            name,
            scopes,
            models,
            expires,
            rpm,
            tpm,
            max_concurrent,
            team,
            budget,
            budget_tokens,
            budget_period,
        } => create_key(
            &files,
            auth::NewKey {
                name,
                scopes,
                models,
                expires_in: expires.map(Into::into),
                rpm,
                tpm,
                max_concurrent,
                team,
                budget,
                budget_tokens,
                budget_period,
            },
        ),
        KeysAction::List => list_keys(&files),
        KeysAction::Revoke { name } => revoke_key(&files, &name),
        KeysAction::Edit {
            name,
            scopes,
            models,
            expires,
            rpm,
            tpm,
            max_concurrent,
            team,
            budget,
            budget_tokens,
            budget_period,
        } => edit_key(
            &files,
            &name,
            auth::KeyEdit {
                scopes,
                models,
                expires_in: expires.map(|e| e.0.map(Into::into)),
                rpm: rpm.map(|v| v.0),
                tpm: tpm.map(|v| v.0),
                max_concurrent: max_concurrent.map(|v| v.0),
                team: team.map(|v| v.0),
                budget: budget.map(|v| v.0),
                budget_tokens: budget_tokens.map(|v| v.0),
                budget_period: budget_period.map(|v| v.0.map(|p| p.0)),
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("h3gate: {e}");
            ExitCode::FAILURE
        }
    }
}
