//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the whole HTTP API, `api/openapi.json`,
//! embedded in the binary and served without an API key (it describes the API, it holds no
//! data).
//!
//! The document is written by hand. The tests below keep it honest: every route the router
//! matches (read from the `match` arms of `app.rs` and `routes/mod.rs`, so nobody maintains a
//! second list) must be in it, every path in it must be routed, and its error codes must be the
//! ones [`crate::problem::Code`] has. A new route without documentation fails CI. (So keep
//! routes as arms of those two `match`es: an arm that hands a rest pattern to another router is
//! not seen.)

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{CONTENT_TYPE, HeaderValue};

use crate::app::HttpResponse;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

/// `GET /v1/openapi.json`.
pub fn get() -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(DOCUMENT.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::problem::Code;

    /// `(METHOD, path)` with every path parameter written `{}`.
    type Route = (String, String);

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("api/openapi.json is JSON")
    }

    fn normalize(path: &str) -> String {
        path.split('/')
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') {
                    "{}"
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The routes of the `match` arms `(&Method::X, ["a", id, ..])` in `source`, under `prefix`.
    /// Arms with a wildcard method or a rest pattern (`..`, `rest @ ..`) dispatch further and
    /// are skipped.
    fn arms(source: &str, prefix: &str) -> Vec<Route> {
        let mut out = Vec::new();
        for (at, _) in source.match_indices("(&Method::") {
            let rest = &source[at + "(&Method::".len()..];
            let Some((method, rest)) = rest.split_once(',') else {
                continue;
            };
            let rest = rest.trim_start();
            let Some(rest) = rest.strip_prefix('[') else {
                continue;
            };
            let Some((pattern, _)) = rest.split_once(']') else {
                continue;
            };
            let segments: Vec<&str> = pattern
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if segments.iter().any(|s| s.ends_with("..")) {
                continue;
            }
            let path: Vec<String> = segments
                .iter()
                .map(
                    |s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                        Some(literal) => literal.to_string(),
                        None => "{}".to_string(),
                    },
                )
                .collect();
            out.push((
                method.trim().to_string(),
                format!("{prefix}/{}", path.join("/")),
            ));
        }
        out
    }

    /// Every route the binary serves, read from the router's source.
    fn routed() -> BTreeSet<Route> {
        let root = include_str!("../app.rs");
        let v1 = include_str!("mod.rs");
        let routes: BTreeSet<Route> = arms(root, "").into_iter().chain(arms(v1, "/v1")).collect();
        // A guard on the parser itself: if the router's style changes so that arms are no
        // longer found, fail here rather than pass on an empty list.
        for must in [
            ("POST", "/ingest/{}"),
            ("GET", "/healthz"),
            ("POST", "/v1/endpoints"),
            ("GET", "/v1/audit"),
        ] {
            assert!(
                routes.contains(&(must.0.to_string(), must.1.to_string())),
                "the route parser no longer finds {must:?}; found {routes:?}"
            );
        }
        routes
    }

    fn documented() -> BTreeSet<Route> {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths is an object");
        let mut out = BTreeSet::new();
        for (path, item) in paths {
            for (method, _) in item.as_object().expect("a path item is an object") {
                if [
                    "get", "put", "post", "delete", "patch", "head", "options", "trace",
                ]
                .contains(&method.as_str())
                {
                    out.insert((method.to_uppercase(), normalize(path)));
                }
            }
        }
        out
    }

    #[test]
    fn is_openapi_3_1() {
        let doc = document();
        let version = doc["openapi"].as_str().expect("openapi is a string");
        assert!(version.starts_with("3.1."), "openapi = {version}");
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn every_routed_route_is_documented() {
        let missing: Vec<_> = routed().difference(&documented()).cloned().collect();
        assert!(
            missing.is_empty(),
            "routes missing from api/openapi.json: {missing:?}"
        );
    }

    #[test]
    fn every_documented_route_is_routed() {
        let extra: Vec<_> = documented().difference(&routed()).cloned().collect();
        assert!(
            extra.is_empty(),
            "api/openapi.json documents routes the router does not serve: {extra:?}"
        );
    }

    #[test]
    fn every_reference_resolves_and_every_operation_answers() {
        let doc = document();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(refs.len() > 20);
        for r in refs {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external $ref {r}"));
            assert!(doc.pointer(pointer).is_some(), "$ref {r} does not resolve");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{method} {path}: no responses"));
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path}: no 2xx"
                );
                assert!(
                    op["operationId"].is_string(),
                    "{method} {path}: no operationId"
                );
                // Management routes need a key (the global security) unless they say otherwise.
                let public = op
                    .get("security")
                    .is_some_and(|s| s == &Value::Array(vec![]));
                if path.starts_with("/v1/") && path != "/v1/openapi.json" {
                    assert!(!public, "{method} {path} is documented as needing no key");
                    assert!(responses.contains_key("401"), "{method} {path}: no 401");
                }
            }
        }
    }

    #[test]
    fn problem_codes_match_the_code_enum() {
        let doc = document();
        let documented: BTreeSet<&str> =
            doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
                .as_array()
                .expect("Problem.code is an enum")
                .iter()
                .filter_map(Value::as_str)
                .collect();
        let known: BTreeSet<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(documented, known);
    }

    #[test]
    fn served_as_json() {
        let response = get();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn the_route_parser_reads_arms() {
        let source = r#"
            (&Method::POST, ["endpoints", id, "pause"]) => x,
            (&Method::GET, ["v1", ..]) => y,
            (&Method::POST, ["admin", rest @ ..]) => y,
            (_, ["healthz"]) => z,
            (&Method::DELETE, [ "api-keys" , key_id ]) => w,
        "#;
        let expected = [
            ("POST".to_string(), "/v1/endpoints/{}/pause".to_string()),
            ("DELETE".to_string(), "/v1/api-keys/{}".to_string()),
        ];
        assert_eq!(arms(source, "/v1"), expected);
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => collect_refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
