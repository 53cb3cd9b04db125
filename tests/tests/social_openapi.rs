//! The served OpenAPI document (`GET /openapi.json`) is valid OpenAPI 3
//! JSON and lists every REST route; imctl reaches the same operations.
use std::process::Command;

use im_tests::*;

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

#[tokio::test]
async fn the_served_document_is_valid_and_lists_every_route() -> anyhow::Result<()> {
    let node = SingleNode::start(&[]).await?;
    let resp = reqwest::get(format!("http://{}/openapi.json", node.http)).await?;
    assert_eq!(resp.status().as_u16(), 200);
    let doc: serde_json::Value = serde_json::from_str(&resp.text().await?)?;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    assert!(doc["info"]["title"].is_string());
    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in ROUTES {
        assert!(
            paths.get(*path).is_some_and(|p| p[*method].is_object()),
            "{method} {path} is not in the document"
        );
    }
    // Every documented operation answers (no 404/405 from the router).
    let api = node.api();
    let u = new_user(&api, &unique("doc")).await?;
    let client = reqwest::Client::new();
    for (method, path) in ROUTES {
        let url = format!("http://{}{}", node.http, path.replace(['{', '}'], ""));
        let req = match *method {
            "get" => client.get(&url),
            "post" => client.post(&url),
            "put" => client.put(&url),
            _ => client.delete(&url),
        };
        let status = req.bearer_auth(&u.token).send().await?.status().as_u16();
        assert_ne!(status, 405, "{method} {path} is not routed");
    }
    Ok(())
}

#[tokio::test]
async fn imctl_reaches_friends_groups_and_conversations() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--c2c-policy", "friends"]).await?;
    let http = format!("http://{}", node.http);
    let imctl = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(bin("imctl")?)
            .args(["--http", &http, "--tcp", &node.tcp])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "imctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (a, b) = (unique("ia"), unique("ib"));
    imctl(&["register", &a, "secret1"])?;
    imctl(&["register", &b, "secret1"])?;
    let req: serde_json::Value = serde_json::from_str(&imctl(&[
        "friend", "-u", &a, "-p", "secret1", "request", &b, "--note", "hi",
    ])?)?;
    let id = req["request_id"].to_string();
    assert!(imctl(&["friend", "-u", &b, "-p", "secret1", "accept", &id])?.contains("pair key"));
    let friends = imctl(&["friend", "-u", &a, "-p", "secret1", "list"])?;
    assert!(friends.contains(&b), "{friends}");
    imctl(&["send", "-u", &a, "-p", "secret1", &b, "hello", "friend"])?;
    let group: serde_json::Value = serde_json::from_str(&imctl(&[
        "group", "-u", &a, "-p", "secret1", "create", "crew", &b,
    ])?)?;
    let gid = group["id"].to_string();
    imctl(&[
        "group", "-u", &b, "-p", "secret1", "send", &gid, "hi", "crew",
    ])?;
    let members = imctl(&["group", "-u", &a, "-p", "secret1", "members", &gid])?;
    assert!(
        members.contains("\"owner\"") && members.contains(&b),
        "{members}"
    );
    let convs = imctl(&["conv", "-u", &a, "-p", "secret1", "list"])?;
    assert!(
        convs.contains("hello friend") && convs.contains("hi crew"),
        "{convs}"
    );
    let hist = imctl(&[
        "conv",
        "-u",
        &b,
        "-p",
        "secret1",
        "history",
        &format!("group:{gid}"),
    ])?;
    assert!(hist.contains("hi crew"), "{hist}");
    assert!(
        imctl(&["conv", "-u", &b, "-p", "secret1", "read", &a])?.contains("read up to message")
    );
    Ok(())
}
