//! `h3gate keys …`: where the keys are (a keys file or the cluster's
//! Redis), and each subcommand's work, once `main.rs` parsed its arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use h3gate::{audit, auth};

use super::runtime;

/// Where a `keys` subcommand works: a keys file, or the cluster's Redis.
enum Store {
    File(PathBuf),
    Cluster(tokio::runtime::Runtime, Box<auth::Keys>),
}

/// The store a `keys` subcommand works on, and the audit log it records
/// to (none with `--keys-file`).
pub(crate) struct KeysFiles {
    store: Store,
    audit: Option<PathBuf>,
    /// `[[teams]]`' names, when the configuration was read.
    teams: Option<Vec<String>>,
}

impl KeysFiles {
    /// `--keys-file`, else the configuration's `[cluster]` (Redis) or
    /// `[auth] keys_file`, and `[audit]` file; the exit code when there is none.
    pub(crate) fn find(config: &Path, keys_file: Option<PathBuf>) -> Result<Self, ExitCode> {
        if let Some(keys) = keys_file {
            return Ok(KeysFiles {
                store: Store::File(keys),
                audit: None,
                teams: None,
            });
        }
        // Only [auth], [audit], [cluster] and [[teams]] are read: the first key can be
        // made before provider keys or certificates are in place.
        match auth::cli_files(config) {
            Ok(f) if f.cluster.is_shared() => Ok(KeysFiles {
                store: Self::cluster(&f.cluster)?,
                audit: f.audit,
                teams: f.teams,
            }),
            Ok(auth::CliFiles {
                keys: Some(keys),
                audit,
                teams,
                ..
            }) => Ok(KeysFiles {
                store: Store::File(keys),
                audit,
                teams,
            }),
            Ok(_) => {
                eprintln!(
                    "h3gate: {} sets no auth.keys_file; pass --keys-file PATH",
                    config.display()
                );
                Err(ExitCode::from(2))
            }
            Err(e) => {
                eprintln!(
                    "h3gate: {}: {e}\n(or pass --keys-file PATH)",
                    config.display()
                );
                Err(ExitCode::from(2))
            }
        }
    }

    /// The cluster's key set, once Redis answered.
    fn cluster(cfg: &h3gate::config::ClusterConfig) -> Result<Store, ExitCode> {
        let rt = runtime(tokio::runtime::Builder::new_current_thread())?;
        match rt.block_on(auth::open_cluster(cfg)) {
            Ok(keys) => Ok(Store::Cluster(rt, Box::new(keys))),
            Err(e) => {
                eprintln!("h3gate: {e}\n(or pass --keys-file PATH to change one replica's file)");
                Err(ExitCode::FAILURE)
            }
        }
    }

    /// Warns when `rec` names a team the configuration's `[[teams]]` lacks.
    fn warn_team(&self, rec: &auth::KeyRecord) {
        let Some(teams) = &self.teams else { return };
        let known = |t: &str| teams.iter().any(|n| n == t);
        if let Some(w) = auth::unknown_team_warning(rec.team.as_deref(), known) {
            eprintln!("h3gate: warning: {w}");
        }
    }

    /// Records a key action in the audit log, when there is one.
    fn audit(&self, action: &str, name: &str, id: &str) {
        if let Some(f) = &self.audit {
            audit::append_now(
                f,
                audit::Entry {
                    action,
                    actor: "cli",
                    result: "ok",
                    request_id: None,
                    client_ip: None,
                    key_id: Some(id),
                    details: serde_json::json!({"name": name}),
                },
            );
        }
    }
}

/// `keys create`: prints the new key, once.
pub(crate) fn create_key(files: &KeysFiles, new: auth::NewKey) -> Result<(), auth::KeysError> {
    let (key, rec) = match &files.store {
        Store::File(path) => auth::create(path, new)?,
        Store::Cluster(rt, keys) => {
            let c = rt.block_on(keys.create(new))?;
            (c.key, c.record)
        }
    };
    files.audit("key_create", &rec.name, &rec.id);
    files.warn_team(&rec);
    println!("{key}");
    eprintln!(
        "h3gate: created key {:?} ({}); it is shown only this once",
        rec.name, rec.id
    );
    Ok(())
}

/// `keys list`: one line per key, with its state, scopes and models.
pub(crate) fn list_keys(files: &KeysFiles) -> Result<(), auth::KeysError> {
    let records = match &files.store {
        Store::File(path) => auth::read_file(path)?.keys,
        Store::Cluster(rt, keys) => match rt.block_on(keys.current()) {
            (list, h3gate::cluster::sync::Sharing::Shared) => {
                list.iter().map(|r| (**r).clone()).collect()
            }
            _ => return Err(auth::KeysError::Unavailable("the list".into())),
        },
    };
    files.audit("key_list", "*", "-");
    for k in records {
        let state = match (k.revoked_at, k.expires_at) {
            (Some(_), _) => "revoked",
            (None, Some(e)) if e <= h3gate::clock::now_secs() => "expired",
            _ => "active",
        };
        let scopes = if k.scopes.is_empty() {
            "all".to_string()
        } else {
            k.scopes.join(",")
        };
        let models = if k.models.is_empty() {
            "*".to_string()
        } else {
            k.models.join(",")
        };
        println!(
            "{}\t{}\t{state}\tscopes={scopes}\tmodels={models}{}",
            k.name,
            k.id,
            spend_columns(&k)
        );
    }
    Ok(())
}

/// `keys list`'s team and budget columns (none when the key has neither):
/// `\tteam=research\tbudget=$5.00/1d\tbudget_tokens=2000000/1d`.
fn spend_columns(k: &auth::KeyRecord) -> String {
    let mut out = String::new();
    if let Some(t) = &k.team {
        out.push_str(&format!("\tteam={t}"));
    }
    let period = k.budget_period.unwrap_or(h3gate::spend::Period::Month);
    if let Some(b) = k.budget {
        // Cents, unless the budget has finer digits.
        let usd = if (b * 100.0).fract() == 0.0 {
            format!("{b:.2}")
        } else {
            b.to_string()
        };
        out.push_str(&format!("\tbudget=${usd}/{period}"));
    }
    if let Some(t) = k.budget_tokens {
        out.push_str(&format!("\tbudget_tokens={t}/{period}"));
    }
    out
}

/// `keys revoke NAME`.
pub(crate) fn revoke_key(files: &KeysFiles, name: &str) -> Result<(), auth::KeysError> {
    let rec = match &files.store {
        Store::File(path) => auth::revoke(path, name)?,
        Store::Cluster(rt, keys) => first(rt.block_on(keys.revoke(name))?, name)?,
    };
    files.audit("key_revoke", &rec.name, &rec.id);
    eprintln!("h3gate: revoked {:?} ({})", rec.name, rec.id);
    Ok(())
}

/// `keys edit NAME …`.
pub(crate) fn edit_key(
    files: &KeysFiles,
    name: &str,
    edit: auth::KeyEdit,
) -> Result<(), auth::KeysError> {
    let rec = match &files.store {
        Store::File(path) => auth::edit(path, name, &edit)?,
        Store::Cluster(rt, keys) => first(rt.block_on(keys.edit(name, edit))?, name)?,
    };
    files.audit("key_edit", &rec.name, &rec.id);
    files.warn_team(&rec);
    eprintln!(
        "h3gate: edited {:?} ({}), revision {}",
        rec.name, rec.id, rec.revision
    );
    Ok(())
}

fn first(c: auth::Changed, name: &str) -> Result<auth::KeyRecord, auth::KeysError> {
    c.records
        .into_iter()
        .next()
        .ok_or_else(|| auth::KeysError::NoSuchKey(name.into()))
}
