//! The OpenAPI document: valid JSON of OpenAPI 3, every REST route listed
//! with its method, every route secured (bearer token, or the server API
//! key for `/api/v1/s2c`) except sign-up and login, and every referenced
//! schema defined.
use serde_json::Value;

/// (method, path) of every REST route under `/api/v1`.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/register"),
    ("post", "/api/v1/login"),
    ("post", "/api/v1/logout"),
    ("get", "/api/v1/users"),
    ("get", "/api/v1/users/{username}"),
    ("get", "/api/v1/messages"),
    ("post", "/api/v1/messages"),
    ("post", "/api/v1/messages/{msg_id}/revoke"),
    ("get", "/api/v1/friends"),
    ("delete", "/api/v1/friends/{user_id}"),
    ("get", "/api/v1/friends/{user_id}/key"),
    ("get", "/api/v1/friends/requests"),
    ("post", "/api/v1/friends/requests"),
    ("post", "/api/v1/friends/requests/{id}/accept"),
    ("post", "/api/v1/friends/requests/{id}/reject"),
    ("get", "/api/v1/blocks"),
    ("put", "/api/v1/blocks/{user_id}"),
    ("delete", "/api/v1/blocks/{user_id}"),
    ("post", "/api/v1/groups"),
    ("get", "/api/v1/groups"),
    ("get", "/api/v1/groups/{id}"),
    ("delete", "/api/v1/groups/{id}"),
    ("post", "/api/v1/groups/{id}/join"),
    ("post", "/api/v1/groups/{id}/quit"),
    ("put", "/api/v1/groups/{id}/announcement"),
    ("put", "/api/v1/groups/{id}/mute"),
    ("put", "/api/v1/groups/{id}/owner"),
    ("post", "/api/v1/groups/{id}/messages"),
    ("get", "/api/v1/groups/{id}/messages"),
    ("get", "/api/v1/groups/{id}/members"),
    ("post", "/api/v1/groups/{id}/members"),
    ("delete", "/api/v1/groups/{id}/members/{user_id}"),
    ("put", "/api/v1/groups/{id}/members/{user_id}/role"),
    ("put", "/api/v1/groups/{id}/members/{user_id}/mute"),
    ("get", "/api/v1/groups/{id}/requests"),
    ("post", "/api/v1/groups/{id}/requests/{user_id}/approve"),
    ("post", "/api/v1/groups/{id}/requests/{user_id}/reject"),
    ("get", "/api/v1/conversations"),
    ("get", "/api/v1/conversations/{conv_id}/messages"),
    ("post", "/api/v1/conversations/{conv_id}/read"),
    ("post", "/api/v1/s2c/messages"),
    ("get", "/api/v1/s2c/users/{username}"),
];

fn doc() -> Value {
    let text = serde_json::to_string(&im_logic::rest::openapi()).expect("serialize");
    serde_json::from_str(&text).expect("the document is JSON")
}

#[test]
fn lists_every_route_and_nothing_else() {
    let doc = doc();
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));
    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in ROUTES {
        let op = &paths.get(*path).unwrap_or_else(|| panic!("{path} missing"))[*method];
        assert!(op.is_object(), "{method} {path} missing");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
        let public = matches!(*path, "/api/v1/register" | "/api/v1/login");
        assert_eq!(
            op["security"].is_array(),
            !public,
            "{method} {path}: bearer security"
        );
    }
    let listed: usize = paths
        .values()
        .map(|p| p.as_object().map_or(0, |o| o.len()))
        .sum();
    assert_eq!(listed, ROUTES.len(), "undocumented extra operations");
}

#[test]
fn every_reference_resolves() {
    let doc = doc();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected ref {r}"));
        assert!(schemas.contains_key(name), "{r} is not defined");
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("$ref", Value::String(s)) => out.push(s.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
