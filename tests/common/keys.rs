//! Gateways with authentication on and API keys created up front, for the
//! tests of keys, scopes and rate limits.

use std::sync::{Arc, Mutex};

use h3gate::auth::{self, NewKey};
use h3gate::config::Config;

use super::Gateway;

/// Starts a gateway with auth on and the given keys created; returns the keys.
pub async fn with_keys(
    keys: Vec<NewKey>,
    tweak: impl FnOnce(&mut Config) + Send + 'static,
) -> (Gateway, Vec<String>) {
    let created = Arc::new(Mutex::new(Vec::new()));
    let out = created.clone();
    let gw = Gateway::start_with(move |c| {
        c.auth.required = true;
        let path = c.auth.keys_file.clone().unwrap();
        for k in keys {
            out.lock().unwrap().push(auth::create(&path, k).unwrap().0);
        }
        tweak(c);
    })
    .await;
    let keys = created.lock().unwrap().clone();
    (gw, keys)
}

pub fn key(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        ..Default::default()
    }
}

pub fn bearer(k: &str) -> String {
    format!("Bearer {k}")
}
