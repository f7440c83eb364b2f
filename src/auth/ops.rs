//! Changing the key set: what the admin API and the `h3gate keys` commands
//! call. On one node each change is a write of the keys file (on a blocking
//! thread); in a cluster it is a merge into Redis (see [`super::shared`]).

use std::sync::Arc;

use super::{file, KeyEdit, KeyRecord, Keys, KeysError, NewKey, Offline};
use crate::cluster::sync::Sharing;
use crate::cluster::Cluster;
use crate::config::ClusterConfig;

/// A key just created: the key itself (shown once) and its record.
#[derive(Debug)]
pub struct Created {
    pub key: String,
    pub record: KeyRecord,
    pub sharing: Sharing,
}

/// The records a revocation or an edit changed (one, unless two replicas
/// created the same name while Redis was unreachable).
#[derive(Debug)]
pub struct Changed {
    pub records: Vec<KeyRecord>,
    pub sharing: Sharing,
}

impl Keys {
    /// Creates a key; names are unique among live keys.
    pub async fn create(&self, new: NewKey) -> Result<Created, KeysError> {
        if let Some(sh) = &self.shared {
            return sh.create(self, new).await;
        }
        let (key, record) = self.on_file(move |p| file::create(p, new)).await?;
        Ok(Created {
            key,
            record,
            sharing: Sharing::Local,
        })
    }

    /// Revokes the live key(s) named `name`: final, everywhere.
    pub async fn revoke(&self, name: &str) -> Result<Changed, KeysError> {
        if let Some(sh) = &self.shared {
            return sh.change(self, name, true, file::revoked).await;
        }
        let n = name.to_string();
        let record = self.on_file(move |p| file::revoke(p, &n)).await?;
        Ok(Changed {
            records: vec![record],
            sharing: Sharing::Local,
        })
    }

    /// Changes the scopes, models, expiry or limits of the live key(s)
    /// named `name`.
    pub async fn edit(&self, name: &str, edit: KeyEdit) -> Result<Changed, KeysError> {
        edit.check()?;
        if let Some(sh) = &self.shared {
            return sh.change(self, name, false, |r| edit.applied(r)).await;
        }
        let n = name.to_string();
        let record = self.on_file(move |p| file::edit(p, &n, &edit)).await?;
        Ok(Changed {
            records: vec![record],
            sharing: Sharing::Local,
        })
    }

    /// Every record, fresh: the file re-read (one node) or a sync with
    /// Redis (a cluster; `Pending` when only the local copy could be read).
    pub async fn current(&self) -> (Vec<Arc<KeyRecord>>, Sharing) {
        let sharing = match &self.shared {
            Some(sh) => sh.current(self).await,
            None => Sharing::Local,
        };
        if self.shared.is_none() {
            self.refresh();
        }
        (self.list(), sharing)
    }

    /// Runs `f` on the keys file on a blocking thread, then re-reads it.
    async fn on_file<T: Send + 'static>(
        &self,
        f: impl FnOnce(&std::path::Path) -> Result<T, KeysError> + Send + 'static,
    ) -> Result<T, KeysError> {
        let path = self
            .path
            .clone()
            .ok_or_else(|| KeysError::Invalid("no keys file".into()))?;
        let out = tokio::task::spawn_blocking(move || f(&path))
            .await
            .map_err(|e| KeysError::Invalid(format!("the keys file writer failed: {e}")))??;
        // Re-read even if the file's time and size look the same.
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.refresh();
        Ok(out)
    }
}

/// The key set in the cluster's Redis, for the `h3gate keys` commands:
/// Redis must answer (a longer timeout than the request path's, at least
/// 2 s); changes are refused while it does not; no local copy is written.
pub async fn open_cluster(cfg: &ClusterConfig) -> Result<Keys, KeysError> {
    let mut cfg = cfg.clone();
    cfg.timeout = cfg.timeout.max(crate::config::Duration::secs(2));
    let cluster = Cluster::connect(&cfg)
        .map_err(KeysError::Invalid)?
        .ok_or_else(|| KeysError::Invalid("no cluster.redis_url".into()))?;
    cluster
        .call_now::<String>("ping", redis::cmd("PING"))
        .await
        .map_err(|e| KeysError::Unavailable(e.message))?;
    Keys::shared(None, cluster, Offline::Refuse)
}
