//! `h3gate usage`: the usage history from the spend file (one node) or
//! the cluster's Redis, read as the configuration names them. Only
//! `[spend]` and `[cluster]` are read, like `h3gate keys` reads `[auth]`.

use std::path::Path;

use super::report::{self, Params, Usage};
use super::Source;
use crate::config::{load_section, ClusterConfig, SpendConfig};
use crate::spend::History;

/// Why the command cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Param(#[from] report::BadParam),
    #[error(transparent)]
    File(#[from] super::file::FileError),
    #[error("redis: {0}")]
    Redis(String),
}

/// The answer `GET /admin/usage` would give for `params` at `now`.
pub async fn usage(config: &Path, params: &Params, now: u64) -> Result<Usage, CliError> {
    let q = params.query(now)?;
    let shown =
        |e: crate::config::ConfigError| CliError::Config(format!("{}: {e}", config.display()));
    let (spend, base): (SpendConfig, _) = load_section(config, "spend").map_err(shown)?;
    let (mut cluster, _): (ClusterConfig, _) = load_section(config, "cluster").map_err(shown)?;
    if cluster.is_shared() {
        cluster.timeout = cluster.timeout.max(crate::config::Duration::secs(2));
        let c = crate::cluster::Cluster::connect(&cluster)
            .map_err(CliError::Config)?
            .ok_or_else(|| CliError::Config("no cluster.redis_url".into()))?;
        c.call_now::<String>("ping", redis::cmd("PING"))
            .await
            .map_err(|e| CliError::Redis(e.message))?;
        let source = Source::Redis {
            cluster: c,
            pending: None,
            max_days: spend.retention.get().as_secs() / 86_400 + 1,
        };
        return report::usage(&source, &q)
            .await
            .map_err(|e| CliError::Redis(e.message));
    }
    let Some(file) = spend.file else {
        return Err(CliError::Config(format!(
            "{} sets no [spend] file: the usage history is kept in the running gateway's memory only (ask it: GET /admin/usage)",
            config.display()
        )));
    };
    let history = History::default();
    // A missing file is no usage yet.
    super::file::load_into(&base.join(file), &history, None, u64::MAX, now)?;
    report::usage(&Source::Memory(&history), &q)
        .await
        .map_err(|e| CliError::Redis(e.message))
}

/// The command: prints a table, or the API's JSON; the exit code (2 for a
/// parameter that is not right).
pub fn run(config: &Path, params: &Params, json: bool) -> std::process::ExitCode {
    use std::process::ExitCode;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("h3gate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(usage(config, params, crate::clock::now_secs())) {
        Ok(u) if json => {
            println!("{}", serde_json::to_string_pretty(&u).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(u) => {
            print!("{}", report::table(&u));
            ExitCode::SUCCESS
        }
        Err(CliError::Param(p)) => {
            eprintln!("h3gate: --{}: {}", p.param.replace('_', "-"), p.message);
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("h3gate: {e}");
            ExitCode::FAILURE
        }
    }
}
