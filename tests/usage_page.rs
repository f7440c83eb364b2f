//! The usage page (`/ui/usage` on the admin listener) in a real browser,
//! Debian's Chromium headless: it loads under its strict CSP, the admin
//! token typed into it goes in a header (never a URL), and what it shows —
//! spend per day in the chart, the keys, teams and models, the budgets —
//! is what `/admin/usage` and `/admin/budgets` say. A model name a client
//! chose is shown as text, never markup.

mod common;

use std::time::Duration;

use common::browser::{Browser, BrowserOptions};
use common::keys::{bearer, key, with_keys};
use common::{chat, wait_until, Proto, TestBody, ADMIN_TOKEN};
use h3gate::config::{PriceConfig, TeamConfig};
use h3gate::spend::period::{month_start, rfc3339, year_month};
use http::Method;
use serde_json::Value;

/// A route pattern that would be markup if the page wrote it as HTML: a
/// client's model under it reaches the history as the route's label.
const HOSTILE: &str = "<img src=x onerror=\"document.title='pwned'\">*";
/// The model a client asks for under it.
const ASKED: &str = "<img src=x onerror=\"document.title='pwned'\">1";

async fn admin(addr: std::net::SocketAddr, path: &str) -> Value {
    let (status, body) = common::spend::admin(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// `(group, cost_usd)` of an answer's rows, sorted.
fn costs(rows: &Value) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap().to_string(),
                r["cost_usd"].as_f64().unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_page_shows_what_the_usage_api_says() {
    let (gw, keys) = with_keys(vec![key("alice"), key("bob")], |c| {
        c.prices.push(PriceConfig {
            model: "gpt-*".into(),
            input: 1000.0,
            output: 2000.0,
            cached_input: None,
            cache_write: None,
        });
        c.teams.push(TeamConfig {
            name: "ml".into(),
            budget: Some(100.0),
            budget_tokens: None,
            budget_period: h3gate::spend::Period::Month,
        });
        let path = c.auth.keys_file.clone().unwrap();
        let mut file = h3gate::auth::read_file(&path).unwrap();
        for k in &mut file.keys {
            k.team = Some("ml".into());
            if k.name == "alice" {
                k.budget = Some(5.0);
                k.budget_period = Some(h3gate::spend::Period::Day);
            }
        }
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let route = format!("model = {HOSTILE:?}\ntargets = [\"up\"]");
        c.routes.push(toml::from_str(&route).unwrap());
    })
    .await;
    // Traffic over every protocol: alice 3 requests, bob 2 (one of them
    // for the hostile model name).
    let mut sent = 0;
    for (p, who, model) in [
        (Proto::H3, &keys[0], "gpt-4o-mini"),
        (Proto::H2, &keys[0], "gpt-4o-mini"),
        (Proto::H1, &keys[0], "gpt-4o"),
        (Proto::H2, &keys[1], "gpt-4o-mini"),
        (Proto::H3, &keys[1], ASKED),
    ] {
        let c = gw.client(p).await;
        let auth = bearer(who);
        let r = c
            .request(
                Method::POST,
                "/v1/chat/completions",
                &[("authorization", auth.as_str())],
                TestBody::Json(chat(model, false)),
            )
            .await;
        assert_eq!(r.status, 200, "{p:?} {model}");
        r.text().await;
        sent += 1;
    }
    // The page's range: this month to the end of today (UTC).
    let now = h3gate::clock::now_secs();
    let (y, m) = year_month(now);
    let from = rfc3339(month_start(y, m))[..10].to_string();
    let to = rfc3339((now / 86_400 + 1) * 86_400)[..10].to_string();
    let range = format!("from={from}&to={to}");
    let recorded = wait_until(Duration::from_secs(10), async || {
        admin(gw.admin, &format!("/admin/usage?{range}&group_by=day")).await["total"]["requests"]
            == sent
    })
    .await;
    assert!(recorded, "the {sent} requests are in the history");

    // The page and its files come with the policy.
    let page = reqwest::get(format!("http://{}/ui/usage", gw.admin))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(
        !page.text().await.unwrap().contains("<script>"),
        "no inline script"
    );

    let browser = Browser::launch(&BrowserOptions::default()).await;
    let tab = browser.new_page().await;
    let net = tab.record_network().await;
    let url = format!("http://{}/ui/usage", gw.admin);
    tab.navigate(&url).await.unwrap();
    let typed = format!(
        "document.getElementById('token').value = {:?}; document.getElementById('load').click(); true",
        ADMIN_TOKEN
    );
    assert_eq!(tab.eval(&typed).await.unwrap(), Value::Bool(true));
    let loaded = wait_until(Duration::from_secs(15), async || {
        tab.eval("document.body.dataset.loaded || ''")
            .await
            .unwrap()
            == "true"
    })
    .await;
    let status = tab
        .eval("document.getElementById('status').textContent")
        .await
        .unwrap();
    assert!(
        loaded,
        "the page loaded its data: {status}; {}",
        browser.stderr_tail()
    );

    // The chart: one bar per day of the range, each the day's cost.
    let bars = tab
        .eval("JSON.stringify([...document.querySelectorAll('#chart rect')].map(r => [r.dataset.day, Number(r.dataset.cost)]))")
        .await
        .unwrap();
    let bars: Vec<(String, f64)> = serde_json::from_str(bars.as_str().unwrap()).unwrap();
    let days = admin(gw.admin, &format!("/admin/usage?{range}&group_by=day")).await;
    let spent: Vec<(String, f64)> = bars.iter().filter(|(_, c)| *c > 0.0).cloned().collect();
    assert_eq!(
        spent,
        costs(&days["rows"]),
        "the chart's days are the API's"
    );
    assert!(!bars.is_empty() && bars.len() >= spent.len());
    let total = tab
        .eval("Number(document.getElementById('total').dataset.cost)")
        .await
        .unwrap();
    assert_eq!(total.as_f64(), days["total"]["cost_usd"].as_f64());

    // The tables: keys, teams and models, each row the API's.
    for (table, group_by) in [
        ("by-key", "key"),
        ("by-team", "team"),
        ("by-model", "model"),
    ] {
        let js = format!(
            "JSON.stringify([...document.querySelectorAll('#{table} tbody tr')].map(r => ({{group: r.dataset.group, cost_usd: Number(r.dataset.cost)}})))"
        );
        let shown: Value =
            serde_json::from_str(tab.eval(&js).await.unwrap().as_str().unwrap()).unwrap();
        let api = admin(
            gw.admin,
            &format!("/admin/usage?{range}&group_by={group_by}"),
        )
        .await;
        assert_eq!(costs(&shown), costs(&api["rows"]), "{table}");
    }
    let models = tab
        .eval("[...document.querySelectorAll('#by-model tbody td:first-child')].map(td => td.textContent).join('\\n')")
        .await
        .unwrap();
    assert!(
        models.as_str().unwrap().contains(HOSTILE),
        "shown as text: {models}"
    );
    let injected = tab
        .eval("document.querySelectorAll('img').length + ':' + document.title")
        .await
        .unwrap();
    assert_eq!(injected, "0:h3gate — usage", "no markup from a model name");

    // The budgets: alice's own and the team's, as /admin/budgets has them.
    let shown = tab
        .eval("JSON.stringify([...document.querySelectorAll('#budgets tbody tr')].map(r => [r.dataset.name, Number(r.dataset.spent), Number(r.dataset.budget)]))")
        .await
        .unwrap();
    let mut shown: Vec<(String, f64, f64)> = serde_json::from_str(shown.as_str().unwrap()).unwrap();
    shown.sort_by(|a, b| a.0.cmp(&b.0));
    let budgets = admin(gw.admin, "/admin/budgets").await;
    let mut api: Vec<(String, f64, f64)> = budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let name = format!(
                "{}:{}:{}",
                b["scope"].as_str().unwrap(),
                b["name"].as_str().unwrap(),
                b["unit"].as_str().unwrap()
            );
            (
                name,
                b["spent"].as_f64().unwrap(),
                b["budget"].as_f64().unwrap(),
            )
        })
        .collect();
    api.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(shown, api);
    let names: Vec<&str> = shown.iter().map(|b| b.0.as_str()).collect();
    assert_eq!(names, ["key:alice:usd", "team:ml:usd"]);
    assert!(shown[1].1 > 0.0, "the team has spent");

    // The token went in a header: no URL the page asked for carries it.
    let urls = net.responses();
    assert!(
        urls.iter().any(|(u, _, _)| u.contains("/admin/usage?")),
        "{urls:?}"
    );
    assert!(
        urls.iter().all(|(u, _, _)| !u.contains(ADMIN_TOKEN)),
        "{urls:?}"
    );
    browser.close().await;
}
