//! The usage page on the admin listener (`GET /ui/usage`): static HTML,
//! CSS and JavaScript compiled into the binary, no external assets, under a
//! strict Content-Security-Policy (only this origin's script, style and
//! `fetch`; no inline code, frames, forms posting elsewhere or referrer).
//! The page itself holds no data: the admin token is typed into it, kept
//! in memory and sent by `fetch` in the `Authorization` header (never in a
//! URL) to `GET /admin/usage` and `GET /admin/budgets`.

use http::{header, HeaderValue, StatusCode};

use crate::exchange::{full, Response};

const HTML: &str = include_str!("ui/usage.html");
const JS: &str = include_str!("ui/usage.js");
const CSS: &str = include_str!("ui/usage.css");

/// The page's policy: nothing but this origin's own files and API.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// `/ui/usage`, `/ui/usage.js`, `/ui/usage.css`; `None` for another path.
pub fn serve(path: &str) -> Option<Response> {
    let (body, kind) = match path {
        "/ui/usage" | "/ui/usage/" => (HTML, "text/html; charset=utf-8"),
        "/ui/usage.js" => (JS, "text/javascript; charset=utf-8"),
        "/ui/usage.css" => (CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut resp = http::Response::new(full(body));
    *resp.status_mut() = StatusCode::OK;
    // The gateway's own (nosniff, DENY framing, no referrer, no-store),
    // with the page's policy in place of the API's allow-nothing one.
    crate::protect::security_headers(&mut resp);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    Some(resp)
}
