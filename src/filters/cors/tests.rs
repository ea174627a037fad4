use super::*;

fn policy(yaml: &str) -> Cors {
    Cors::new(&serde_yaml::from_str::<CorsConfig>(yaml).unwrap())
}

fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build(method, b"/api/x", None).unwrap();
    for (name, value) in headers {
        req.append_header(name.to_string(), *value).unwrap();
    }
    req
}

/// The headers `policy` gives an answer (`status`, with `backend` headers)
/// to a request with `headers`.
fn answered(
    policy: &Cors,
    method: &str,
    headers: &[(&str, &str)],
    backend: &[(&str, &str)],
) -> http::HeaderMap {
    let judged = policy.judge(&request(method, headers));
    let mut answer = ResponseHeader::build(200, None).unwrap();
    for (name, value) in backend {
        answer.append_header(name.to_string(), *value).unwrap();
    }
    policy.apply(&judged, &mut answer).unwrap();
    answer.headers.clone()
}

const APP: &str = "https://app.example.com";
const FULL: &str = "origins: [https://app.example.com, 'http://127.0.0.1:3000']
methods: [GET, POST, PUT, DELETE]
headers: [Authorization, Content-Type, X-Trace]
expose: [X-Request-Id, RateLimit-Remaining]
credentials: true
max_age: 10m
";

fn preflight(method: &str, asked_headers: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("origin", APP.to_string()),
        ("access-control-request-method", method.to_string()),
    ];
    if let Some(asked) = asked_headers {
        headers.push(("access-control-request-headers", asked.to_string()));
    }
    headers
}

fn borrowed<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    headers.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

#[test]
fn an_allowed_preflight_gets_every_allow_header() {
    let cors = policy(FULL);
    let asked = preflight("PUT", Some("content-type,x-trace, authorization"));
    let judged = cors.judge(&request("OPTIONS", &borrowed(&asked)));
    assert!(judged.is_preflight());
    let headers = answered(&cors, "OPTIONS", &borrowed(&asked), &[]);
    assert_eq!(headers["access-control-allow-origin"], APP);
    assert_eq!(
        headers["access-control-allow-methods"],
        "GET, POST, PUT, DELETE"
    );
    assert_eq!(
        headers["access-control-allow-headers"],
        "Authorization, Content-Type, X-Trace"
    );
    assert_eq!(headers["access-control-max-age"], "600");
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(headers["vary"], "Origin");
    assert!(!headers.contains_key("access-control-expose-headers"));
}

#[test]
fn a_preflight_asking_for_what_is_not_listed_gets_no_allow_header() {
    let cors = policy(FULL);
    for asked in [
        preflight("PATCH", None),
        preflight("put", None),
        preflight("PUT", Some("content-type, x-other")),
        vec![
            ("origin", "https://other.example.com".to_string()),
            ("access-control-request-method", "GET".to_string()),
        ],
        vec![
            ("origin", "null".to_string()),
            ("access-control-request-method", "GET".to_string()),
        ],
    ] {
        let judged = cors.judge(&request("OPTIONS", &borrowed(&asked)));
        assert!(judged.is_preflight(), "{asked:?}");
        let headers = answered(&cors, "OPTIONS", &borrowed(&asked), &[]);
        let allow: Vec<_> = headers
            .keys()
            .filter(|n| n.as_str().starts_with("access-control-"))
            .collect();
        assert!(allow.is_empty(), "{asked:?}: {allow:?}");
        assert_eq!(headers["vary"], "Origin");
    }
}

#[test]
fn only_options_with_origin_and_a_requested_method_is_a_preflight() {
    let cors = policy(FULL);
    for (method, headers) in [
        ("OPTIONS", vec![("origin", APP)]),
        ("OPTIONS", vec![("access-control-request-method", "PUT")]),
        (
            "GET",
            vec![("origin", APP), ("access-control-request-method", "PUT")],
        ),
    ] {
        assert!(
            !cors.judge(&request(method, &headers)).is_preflight(),
            "{method} {headers:?}"
        );
    }
}

#[test]
fn actual_answers_get_the_origin_exposed_headers_and_vary() {
    let cors = policy(FULL);
    let headers = answered(
        &cors,
        "GET",
        &[("origin", "http://127.0.0.1:3000")],
        &[
            ("vary", "Accept-Encoding"),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", "TRACE"),
            ("access-control-allow-private-network", "true"),
        ],
    );
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://127.0.0.1:3000"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(
        headers["access-control-expose-headers"],
        "X-Request-Id, RateLimit-Remaining"
    );
    assert!(!headers.contains_key("access-control-allow-methods"));
    assert!(!headers.contains_key("access-control-allow-private-network"));
    let vary: Vec<_> = headers.get_all("vary").iter().collect();
    assert_eq!(vary, ["Accept-Encoding", "Origin"]);
    // A Vary that has Origin (or `*`) already is left as it is.
    for already in ["accept-encoding, ORIGIN", "*"] {
        let headers = answered(&cors, "GET", &[("origin", APP)], &[("vary", already)]);
        let vary: Vec<_> = headers.get_all("vary").iter().collect();
        assert_eq!(vary, [already]);
    }
}

#[test]
fn other_origins_and_no_origin_get_only_vary() {
    let cors = policy(FULL);
    for headers in [
        vec![("origin", "https://evil.example.com")],
        vec![("origin", APP), ("origin", APP)],
        vec![],
    ] {
        let answer = answered(
            &cors,
            "POST",
            &headers,
            &[("access-control-allow-origin", "https://evil.example.com")],
        );
        assert!(
            !answer
                .keys()
                .any(|n| n.as_str().starts_with("access-control-")),
            "{headers:?}: {answer:?}"
        );
        assert_eq!(answer["vary"], "Origin");
    }
}

#[test]
fn any_origin_is_answered_with_a_star_and_no_credentials() {
    let cors = policy("origins: ['*']\n");
    let headers = answered(&cors, "GET", &[("origin", "https://anyone.test")], &[]);
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(!headers.contains_key("access-control-allow-credentials"));
    let asked = [
        ("origin", "null"),
        ("access-control-request-method", "POST"),
    ];
    let headers = answered(&cors, "OPTIONS", &asked, &[]);
    assert_eq!(headers["access-control-allow-origin"], "*");
    // The defaults: the CORS-safelisted methods, no extra headers.
    assert_eq!(headers["access-control-allow-methods"], "GET, HEAD, POST");
    assert!(!headers.contains_key("access-control-allow-headers"));
    assert!(!headers.contains_key("access-control-max-age"));
    let refused = [
        ("origin", "https://anyone.test"),
        ("access-control-request-method", "DELETE"),
    ];
    let headers = answered(&cors, "OPTIONS", &refused, &[]);
    assert!(!headers.contains_key("access-control-allow-origin"));
}
