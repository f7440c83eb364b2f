//! AWS's signing test suite (tests/data/sigv4, see its README) through
//! [`sign_headers`]: each case's expected `Authorization` header.

use super::*;

const CASES: [&str; 9] = [
    "get-vanilla",
    "get-vanilla-query",
    "get-vanilla-query-order-key-case",
    "get-vanilla-with-session-token",
    "post-header-key-case",
    "post-sts-header-before",
    "post-vanilla",
    "post-vanilla-query",
    "post-x-www-form-urlencoded",
];

struct Case {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// `request.txt`: the request line, `Name:value` headers, a blank line, the body.
fn parse_request(text: &str) -> Case {
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let first = lines.next().unwrap();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap().to_string();
    let path = parts.next().unwrap().to_string();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.to_string())
        })
        .collect();
    Case {
        method,
        path,
        headers,
        body: body.as_bytes().to_vec(),
    }
}

fn expected_authorization(signed: &str) -> String {
    signed
        .lines()
        .find_map(|l| l.strip_prefix("Authorization:"))
        .unwrap()
        .to_string()
}

fn read(case: &str, file: &str) -> String {
    let path = format!(
        "{}/tests/data/sigv4/{case}/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn context(case: &str) -> (Credentials, String, String, SystemTime, bool) {
    let ctx: serde_json::Value = serde_json::from_str(&read(case, "context.json")).unwrap();
    let c = &ctx["credentials"];
    let creds = Credentials {
        access_key_id: c["access_key_id"].as_str().unwrap().into(),
        secret_access_key: Secret::new(c["secret_access_key"].as_str().unwrap()),
        session_token: c["token"].as_str().map(Secret::new),
    };
    let time = time::OffsetDateTime::parse(
        ctx["timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (
        creds,
        ctx["region"].as_str().unwrap().into(),
        ctx["service"].as_str().unwrap().into(),
        time.into(),
        ctx["sign_body"].as_bool().unwrap_or(false),
    )
}

#[test]
fn aws_signing_suite_header_signatures() {
    for case in CASES {
        let req = parse_request(&read(case, "request.txt"));
        let (creds, region, service, time, sign_body) = context(case);
        let host = &req.headers.iter().find(|(n, _)| n == "host").unwrap().1;
        let uri = format!("https://{host}{}", req.path);
        let headers: Vec<(&str, &str)> = req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let scope = Scope {
            region: &region,
            service: &service,
            time,
            content_sha256: sign_body,
        };
        let added = sign_headers(&req.method, &uri, &headers, &req.body, &creds, &scope)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let auth = added
            .iter()
            .find(|(n, _)| *n == "authorization")
            .map(|(_, v)| v.clone());
        assert_eq!(
            auth.as_deref(),
            Some(expected_authorization(&read(case, "header-signed-request.txt")).as_str()),
            "{case}"
        );
        assert!(added
            .iter()
            .any(|(n, v)| *n == "x-amz-date" && v == "20150830T123600Z"));
        let token = added.iter().find(|(n, _)| *n == "x-amz-security-token");
        assert_eq!(
            token.map(|(_, v)| v.as_str()),
            creds.session_token.as_ref().map(|t| t.expose()),
            "{case}: the session token is sent"
        );
    }
}

#[test]
fn verify_accepts_our_signature_and_refuses_another() {
    let creds = Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Secret::new("not-a-real-secret-for-tests"),
        session_token: Some(Secret::new("fake-session-token")),
    };
    let scope = Scope {
        region: "us-east-1",
        service: "bedrock",
        time: SystemTime::now(),
        content_sha256: false,
    };
    let uri = "http://127.0.0.1:9/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A0%3Ax%2Fy/converse";
    let body = br#"{"messages":[]}"#;
    let headers = [
        ("host", "127.0.0.1:9"),
        ("content-type", "application/json"),
    ];
    let added = sign_headers("POST", uri, &headers, body, &creds, &scope).unwrap();
    let mut map = http::HeaderMap::new();
    for (n, v) in headers
        .iter()
        .copied()
        .chain(added.iter().map(|(n, v)| (*n, v.as_str())))
    {
        map.insert(
            http::HeaderName::from_static(n),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    assert!(verify(
        "POST",
        uri,
        &map,
        body,
        &creds,
        "us-east-1",
        "bedrock"
    ));
    // Another body, region, secret or path: refused.
    assert!(!verify(
        "POST",
        uri,
        &map,
        b"{}",
        &creds,
        "us-east-1",
        "bedrock"
    ));
    assert!(!verify(
        "POST",
        uri,
        &map,
        body,
        &creds,
        "eu-west-1",
        "bedrock"
    ));
    let other = Credentials {
        secret_access_key: Secret::new("another-fake-secret"),
        ..creds.clone()
    };
    assert!(!verify(
        "POST",
        uri,
        &map,
        body,
        &other,
        "us-east-1",
        "bedrock"
    ));
    let moved = uri.replace("converse", "converse-stream");
    assert!(!verify(
        "POST",
        &moved,
        &map,
        body,
        &creds,
        "us-east-1",
        "bedrock"
    ));
    map.remove("authorization");
    assert!(!verify(
        "POST",
        uri,
        &map,
        body,
        &creds,
        "us-east-1",
        "bedrock"
    ));
}

#[test]
fn credentials_never_show_in_debug() {
    let c = Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Secret::new("fake-secret-value-0000"),
        session_token: Some(Secret::new("fake-token-value-0000")),
    };
    let text = format!("{c:?} {:?}", CredentialSource::Fixed(c.clone()));
    assert!(!text.contains("fake-secret-value") && !text.contains("fake-token-value"));
}
