//! For the spend tests: a round price for `gpt-4o-mini`, a request's
//! reservation at it, keys' budgets set in the keys file, and the admin
//! API's JSON.

use h3gate::config::{Config, PriceConfig};
use serde_json::Value;

/// USD per million tokens for `gpt-4o-mini` in [`priced`]: round numbers,
/// so a request's cost is exact in nano-USD (the test upstream reports 7
/// prompt and 5 completion tokens).
pub const INPUT: f64 = 1000.0;
pub const OUTPUT: f64 = 2000.0;
/// What one answered `gpt-4o-mini` request costs, in nano-USD:
/// 7·1000·1000 + 5·2000·1000.
pub const ACTUAL: u64 = 17_000_000;

pub fn priced(c: &mut Config) {
    c.prices.push(PriceConfig {
        model: "gpt-4o-mini".into(),
        input: INPUT,
        output: OUTPUT,
        cached_input: None,
        cache_write: None,
    });
}

/// The reservation of a chat `body` at [`priced`]'s prices: a quarter of
/// its bytes as prompt tokens at the input price, its `max_tokens` at the
/// output price.
pub fn estimate(body: &Value) -> u64 {
    let prompt = body.to_string().len() as u64 / 4;
    let completion = body["max_tokens"].as_u64().unwrap();
    prompt * (INPUT * 1000.0) as u64 + completion * (OUTPUT * 1000.0) as u64
}

/// Changes the records of a keys file, as `keys edit` would.
pub fn edit_keys(path: &std::path::Path, edit: impl Fn(&mut h3gate::auth::KeyRecord)) {
    let mut file = h3gate::auth::read_file(path).unwrap();
    file.keys.iter_mut().for_each(edit);
    std::fs::write(path, serde_json::to_vec(&file).unwrap()).unwrap();
}

/// `GET path` on an admin listener with the token: status and JSON.
pub async fn admin(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(super::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}
