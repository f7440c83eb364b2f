//! AWS Signature Version 4 for Bedrock requests, through the `aws-sigv4`
//! crate (RustCrypto HMAC-SHA256; no aws-lc-rs), and where the credentials
//! come from: the provider's own config keys, else the standard
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`
//! variables, read each time a request is signed (so rotated credentials
//! apply from the next request, no restart).
//!
//! The signature covers the method, the path (percent-encoded as AWS does,
//! then encoded again for the canonical request), the query, the `host`,
//! `x-amz-date` and given headers, and the body's SHA-256;
//! `x-amz-security-token` is signed too when there is a session token.

use std::time::SystemTime;

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;

use crate::config::Secret;

/// One set of AWS credentials. `Debug` never shows the secret parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .finish()
    }
}

/// Where a provider's credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// `access_key_id` / `secret_access_key` / `session_token` in the config.
    Fixed(Credentials),
    /// The standard environment variables, read at every signing.
    Environment,
}

impl CredentialSource {
    /// The config's keys when both are set, else the environment.
    pub fn new(access_key_id: &Secret, secret: &Secret, token: &Secret) -> Self {
        if access_key_id.is_empty() || secret.is_empty() {
            return CredentialSource::Environment;
        }
        CredentialSource::Fixed(Credentials {
            access_key_id: access_key_id.expose().to_string(),
            secret_access_key: secret.clone(),
            session_token: (!token.is_empty()).then(|| token.clone()),
        })
    }

    /// The credentials to sign with now, if there are any.
    pub fn current(&self) -> Option<Credentials> {
        match self {
            CredentialSource::Fixed(c) => Some(c.clone()),
            CredentialSource::Environment => {
                let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
                Some(Credentials {
                    access_key_id: var("AWS_ACCESS_KEY_ID")?,
                    secret_access_key: Secret::new(var("AWS_SECRET_ACCESS_KEY")?),
                    session_token: var("AWS_SESSION_TOKEN").map(Secret::new),
                })
            }
        }
    }
}

/// What one signature is made for, besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub region: &'a str,
    /// The signing name: `bedrock` for Bedrock's runtime API.
    pub service: &'a str,
    pub time: SystemTime,
    /// Also send (and sign) `x-amz-content-sha256` (S3 style; Bedrock
    /// needs none).
    pub content_sha256: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot sign the request: {0}")]
pub struct SignError(String);

/// The headers to add to a request for its signature: `x-amz-date`,
/// `authorization`, and `x-amz-security-token` (and
/// `x-amz-content-sha256`) when they apply. `uri` is the absolute,
/// already-encoded URI; `headers` those signed besides them, `host`
/// among them.
pub fn sign_headers(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    creds: &Credentials,
    scope: &Scope<'_>,
) -> Result<Vec<(&'static str, String)>, SignError> {
    // The signer takes the host from the URI when no header names it, and
    // insists on one being there: always give it the header.
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        return Err(SignError("no host header".into()));
    }
    let identity = AwsCredentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose().to_string(),
        creds.session_token.as_ref().map(|t| t.expose().to_string()),
        None,
        "h3gate",
    )
    .into();
    let mut settings = SigningSettings::default();
    if scope.content_sha256 {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(scope.region)
        .name(scope.service)
        .time(scope.time)
        .settings(settings)
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();
    let request = SignableRequest::new(
        method,
        uri,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| SignError(e.to_string()))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();
    let (headers, _) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name(), h.value().to_string()))
        .collect())
}

/// Test support: whether a received request's `authorization` is the
/// signature `creds` would give it (the test upstream checks what the
/// gateway sends with this). The signed headers are those the
/// authorization lists; the time is the request's `x-amz-date`.
#[doc(hidden)]
pub fn verify(
    method: &str,
    uri: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    creds: &Credentials,
    region: &str,
    service: &str,
) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(auth), Some(date)) = (text("authorization"), text("x-amz-date")) else {
        return false;
    };
    let Some(signed) = auth
        .split(", ")
        .find_map(|p| p.strip_prefix("SignedHeaders="))
    else {
        return false;
    };
    let Ok(time) = time::PrimitiveDateTime::parse(
        date,
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
    ) else {
        return false;
    };
    // The signer adds these itself.
    const ADDED: [&str; 4] = [
        "authorization",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-content-sha256",
    ];
    let mut signed_headers = Vec::new();
    for name in signed.split(';').filter(|n| !ADDED.contains(n)) {
        match text(name) {
            Some(v) => signed_headers.push((name, v)),
            None => return false,
        }
    }
    let scope = Scope {
        region,
        service,
        time: time.assume_utc().into(),
        content_sha256: signed.split(';').any(|n| n == "x-amz-content-sha256"),
    };
    match sign_headers(method, uri, &signed_headers, body, creds, &scope) {
        Ok(expected) => expected
            .iter()
            .any(|(n, v)| *n == "authorization" && v == auth),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests;
