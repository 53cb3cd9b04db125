//! Bad input: garbage bytes, a length over the limit, an unknown command, a
//! bad or expired token, no auth within the timeout, malformed bodies,
//! SQL-ish strings. Each gets an error (frame or close) and the server keeps
//! serving the other connections, which lose nothing.
use std::time::Duration;

use bytes::Bytes;
use im_client::conn::raw_header;
use im_client::{ClientError, Connection, DeviceType, Endpoint, Event};
use im_proto::client::ErrorCode;
use im_proto::{Command, Frame};
use im_tests::*;

/// Waits for an error event and then the close.
async fn expect_error_then_close(conn: &Connection, code: ErrorCode) {
    match conn.next_event_timeout(Duration::from_secs(5)).await {
        Ok(Some(Event::Error(e))) => assert_eq!(e.code, code as u32, "{}", e.message),
        other => panic!("expected an error frame {code:?}, got {other:?}"),
    }
    assert!(
        matches!(
            conn.next_event_timeout(Duration::from_secs(5)).await,
            Ok(None)
        ),
        "the server must close the connection"
    );
}

fn server_code(e: &ClientError) -> Option<i32> {
    e.code()
}

#[tokio::test]
async fn bad_input_is_refused_and_others_lose_nothing() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--auth-timeout-secs", "1", "--max-body", "4096"]).await?;
    let api = node.api();
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let a = online(&node.tcp_endpoint(), &alice).await?;
    let b = online(&node.ws_endpoint(), &bob).await?;
    let mut sent = 0;
    let mut chat = async |n: usize| -> anyhow::Result<()> {
        for _ in 0..n {
            a.send_text(bob.id, &format!("ok {sent}")).await?;
            sent += 1;
        }
        Ok(())
    };
    chat(10).await?;

    // 1. Garbage bytes: BAD_FRAME, closed.
    let c = Connection::connect_tcp(&node.tcp).await?;
    c.send_raw(Bytes::from_static(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await?;
    expect_error_then_close(&c, ErrorCode::BadFrame).await;
    chat(10).await?;

    // 2. A length field over the limit: FRAME_TOO_LARGE before any body is read.
    let c = Connection::connect_tcp(&node.tcp).await?;
    c.send_raw(raw_header(Command::Auth as u16, 1, 100 * 1024 * 1024))
        .await?;
    expect_error_then_close(&c, ErrorCode::FrameTooLarge).await;
    chat(10).await?;

    // 3. A bad token: UNAUTHENTICATED, closed.
    let c = Connection::connect_tcp(&node.tcp).await?;
    let e = c.auth("not-a-token", DeviceType::Web).await.unwrap_err();
    assert_eq!(
        server_code(&e),
        Some(ErrorCode::Unauthenticated as i32),
        "{e}"
    );
    assert!(matches!(
        c.next_event_timeout(Duration::from_secs(5)).await,
        Ok(None)
    ));

    // 4. An expired token (signed with the server's own secret): TOKEN_EXPIRED.
    let now = im_proto::now_ms() / 1000;
    let claims = serde_json::json!({"sub": alice.id, "jti": "expired-1", "iat": now - 7200, "exp": now - 3600});
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(node.jwt_secret.as_bytes()),
    )?;
    let c = Connection::connect_tcp(&node.tcp).await?;
    let e = c.auth(&expired, DeviceType::Web).await.unwrap_err();
    assert_eq!(server_code(&e), Some(ErrorCode::TokenExpired as i32), "{e}");

    // 5. No AUTH within the timeout: AUTH_TIMEOUT, closed.
    let c = Connection::connect_tcp(&node.tcp).await?;
    expect_error_then_close(&c, ErrorCode::AuthTimeout).await;

    // 6. First frame is not AUTH: UNAUTHENTICATED.
    let c = Connection::connect_tcp(&node.tcp).await?;
    let e = c.heartbeat().await.unwrap_err();
    assert_eq!(
        server_code(&e),
        Some(ErrorCode::Unauthenticated as i32),
        "{e}"
    );
    chat(10).await?;

    // 7. After AUTH: unknown command, malformed body, unknown recipient,
    // oversize body and SQL-ish strings get error responses; the connection lives.
    let carol = new_user(&api, &unique("carol")).await?;
    let c =
        im_client::ChatClient::connect(&node.tcp_endpoint(), &carol.token, DeviceType::Pad, None)
            .await?;
    let e = c
        .conn
        .request_code(0x7777, Bytes::from_static(b"??"))
        .await
        .unwrap_err();
    assert_eq!(
        server_code(&e),
        Some(ErrorCode::UnknownCommand as i32),
        "{e}"
    );
    let e = c
        .conn
        .request(Command::C2cSend, vec![0xff, 0xff, 0xff])
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), Some(ErrorCode::BadFrame as i32), "{e}");
    let e = c.send_text(987_654_321, "to nobody").await.unwrap_err();
    assert_eq!(server_code(&e), Some(ErrorCode::UnknownUser as i32), "{e}");
    let e = c
        .send_with_id(bob.id, "", 1, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), Some(ErrorCode::BadRequest as i32), "{e}");
    let sqlish = "x'); DROP TABLE messages; --";
    let r = c
        .send_with_id(bob.id, sqlish, 1, Bytes::from(sqlish))
        .await?;
    assert!(!r.duplicate);
    c.conn.heartbeat().await?;
    // A frame body over the limit closes only that connection.
    let big = Frame::request(Command::C2cSend, 99, vec![0u8; 5000]).to_bytes();
    c.conn.send_raw(big).await?;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while !c.conn.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "oversize frame must close the connection");

    // 8. REST: SQL-ish usernames are refused, oversize bodies get 413.
    let e = api
        .register("bob'; DROP TABLE users;--", "password1")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("http://{}/api/v1/messages", node.http))
        .bearer_auth(&alice.token)
        .header("content-type", "application/json")
        .body(vec![b' '; 1024 * 1024])
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 413);

    chat(10).await?;
    // Bob got every message exactly once, in order, plus carol's SQL-ish one.
    let got = recv_n(&b, sent + 1, Duration::from_secs(10)).await?;
    assert_eq!(got.len(), sent + 1);
    assert_contiguous(&got, 1);
    let from_alice: Vec<String> = got
        .iter()
        .filter(|m| m.from == alice.id)
        .map(|m| String::from_utf8_lossy(&m.body).into())
        .collect();
    assert_eq!(
        from_alice,
        (0..sent).map(|i| format!("ok {i}")).collect::<Vec<_>>()
    );
    assert!(
        got.iter()
            .any(|m| m.from == carol.id && m.client_msg_id == sqlish && m.body == sqlish)
    );
    Ok(())
}

/// Over WebSocket a frame is one binary message: a ping is answered and the
/// session goes on, a text message is refused with an error frame and the
/// connection is closed.
#[tokio::test]
async fn websocket_text_is_refused_and_pings_are_answered() -> anyhow::Result<()> {
    use futures::{SinkExt, StreamExt};
    use im_proto::prost::Message as _;
    use tokio_tungstenite::tungstenite::Message;

    let node = SingleNode::start(&[]).await?;
    let Endpoint::Ws(url) = node.ws_endpoint() else {
        unreachable!("a WebSocket endpoint")
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an answer within 5 s")
    };
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await?;
    match next(&mut ws).await {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    ws.send(Message::Text("not a frame".into())).await?;
    let frame = match next(&mut ws).await {
        Some(Ok(Message::Binary(b))) => Frame::decode_exact(&b, 1 << 20)?,
        other => panic!("expected an error frame, got {other:?}"),
    };
    assert!(frame.flags.is_error());
    let err = im_proto::client::Error::decode(frame.body)?;
    assert_eq!(err.code, ErrorCode::BadFrame as u32, "{}", err.message);
    // Then the server closes: a close message, or the end of the stream.
    match next(&mut ws).await {
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {}
        Some(Ok(other)) => panic!("expected the close, got {other:?}"),
    }
    Ok(())
}

/// On Postgres a NUL in a client message id would fail the statement that
/// stores a whole commit batch, and with it every other user's message in
/// that batch. It is refused up front: BAD_REQUEST for the sender, nothing
/// lost for anyone else (their messages share the writer with it).
#[tokio::test]
async fn a_control_character_in_a_message_id_is_refused_and_fails_no_batch() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, 1).await?;
    let api = cluster.api(0);
    let mallory = new_user(&api, &unique("mallory")).await?;
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let m = online(&cluster.tcp_endpoint(0), &mallory).await?;
    let a = online(&cluster.tcp_endpoint(0), &alice).await?;
    let b = online(&cluster.tcp_endpoint(0), &bob).await?;
    let rounds = 50;
    let poison = async {
        let mut refused = 0;
        for i in 0..rounds {
            let id = format!("x{i}\0y");
            match m
                .send_with_id(bob.id, &id, 1, Bytes::from_static(b"p"))
                .await
            {
                Err(im_client::ClientError::Server { code, .. })
                    if code == ErrorCode::BadRequest as i32 =>
                {
                    refused += 1
                }
                other => panic!("expected BAD_REQUEST, got {other:?}"),
            }
        }
        refused
    };
    let chat = async {
        for i in 0..rounds {
            a.send_text(bob.id, &format!("ok {i}")).await?;
        }
        anyhow::Ok(())
    };
    let (refused, chatted) = tokio::join!(poison, chat);
    chatted?;
    assert_eq!(refused, rounds);
    let got = recv_n(&b, rounds, Duration::from_secs(10)).await?;
    assert_contiguous(&got, 1);
    assert!(got.iter().all(|m| m.from == alice.id));
    Ok(())
}

/// Free text in REST bodies (group names, friend request notes) with a
/// control character is a bad request, not a storage error: JSON may carry
/// `\u0000`, which Postgres text refuses. Line breaks stay allowed in notes.
#[tokio::test]
async fn control_characters_in_names_and_notes_are_bad_requests() -> anyhow::Result<()> {
    let cluster = Cluster::start(0, 1).await?;
    let api = cluster.api(0);
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let e = api
        .create_group(&alice.token, "team\0x", &[], "open")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");
    let e = api
        .create_group(&alice.token, "team\nx", &[], "open")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");
    let e = api
        .send_friend_request(&alice.token, bob.id, "hi\0")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");
    // Still usable, and a note may span lines.
    api.create_group_id(&alice.token, "team", &[bob.id]).await?;
    api.send_friend_request(&alice.token, bob.id, "hi,\nit's alice")
        .await?;
    Ok(())
}
