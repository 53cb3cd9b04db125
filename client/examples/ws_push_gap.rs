//! How long a push takes to reach a WebSocket client that is in a
//! conversation: alice (WebSocket) sends to bob (TCP), then bob answers at
//! once; prints the time from bob's `SENT` to alice receiving the answer.
//!
//! Against a running single node that lets strangers chat:
//! `IM_C2C_POLICY=anyone cargo run -p im-server`, then
//! `cargo run -p im-client --example ws_push_gap [API] [WS_URL] [TCP_ADDR] [ROUNDS]`
//! (defaults `http://127.0.0.1:8080`, `ws://127.0.0.1:8080/ws`,
//! `127.0.0.1:7000`, 200). With Nagle's algorithm on the gateway's HTTP
//! connections, alice's answer waited for her kernel's delayed
//! acknowledgement of the `SENT` before it (~40 ms on Linux).
use std::time::{Duration, Instant};

use im_client::api::Api;
use im_client::chat::{ChatClient, Endpoint};
use im_proto::client::DeviceType;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let api = Api::new(&arg(0, "http://127.0.0.1:8080"))?;
    let ws = Endpoint::Ws(arg(1, "ws://127.0.0.1:8080/ws"));
    let tcp = Endpoint::Tcp(arg(2, "127.0.0.1:7000"));
    let rounds: usize = arg(3, "200").parse()?;

    let tag = std::process::id();
    let (a, b) = (format!("gap-a{tag}"), format!("gap-b{tag}"));
    for name in [&a, &b] {
        api.register(name, "secret123").await?;
    }
    let alice_login = api.login(&a, "secret123").await?;
    let bob_login = api.login(&b, "secret123").await?;
    let alice = ChatClient::connect(&ws, &alice_login.token, DeviceType::Web, None).await?;
    let bob = ChatClient::connect(&tcp, &bob_login.token, DeviceType::Mobile, None).await?;

    let mut gaps = Vec::with_capacity(rounds);
    let mut sends = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let send = Instant::now();
        alice.send_text(bob.user_id, "hi").await?;
        sends.push(send.elapsed().as_secs_f64() * 1000.0);
        bob.send_text(alice.user_id, "back").await?;
        let sent = Instant::now();
        'answer: loop {
            for m in alice.recv(Duration::from_secs(1)).await? {
                if m.from == bob.user_id && m.content_type < 0xF000 {
                    break 'answer;
                }
            }
        }
        gaps.push(sent.elapsed().as_secs_f64() * 1000.0);
        let _ = bob.recv(Duration::from_millis(5)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report("bob's SENT -> alice (WebSocket) received", gaps);
    report("alice's send -> her SENT (WebSocket)", sends);
    Ok(())
}

fn report(what: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q) as usize];
    println!(
        "{what}, {} rounds: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms; over 30 ms: {}",
        ms.len(),
        at(0.5),
        at(0.9),
        at(1.0),
        ms.iter().filter(|g| **g > 30.0).count()
    );
}
