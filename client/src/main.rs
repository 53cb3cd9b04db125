//! `imctl`: chat and inspect the IM server from a terminal.
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use im_client::{Api, ChatClient, DeviceType, Endpoint};
use im_proto::client::Message;
use tokio::io::AsyncBufReadExt;

mod imctl_social;

#[derive(Debug, Parser)]
#[command(name = "imctl", version, about = "Chat with and inspect an IM server")]
struct Cli {
    /// REST base URL.
    #[arg(
        long,
        env = "IMCTL_HTTP",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    http: String,
    /// Gateway TCP address.
    #[arg(
        long,
        env = "IMCTL_TCP",
        default_value = "127.0.0.1:7000",
        global = true
    )]
    tcp: String,
    /// Use WebSocket at this URL (e.g. ws://127.0.0.1:8080/ws) instead of TCP.
    #[arg(long, env = "IMCTL_WS", global = true)]
    ws: Option<String>,
    #[arg(long, value_enum, default_value_t = Device::Desktop, global = true)]
    device: Device,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Device {
    Mobile,
    Desktop,
    Web,
    Pad,
}

impl From<Device> for DeviceType {
    fn from(d: Device) -> Self {
        match d {
            Device::Mobile => DeviceType::Mobile,
            Device::Desktop => DeviceType::Desktop,
            Device::Web => DeviceType::Web,
            Device::Pad => DeviceType::Pad,
        }
    }
}

#[derive(Debug, Args)]
struct Who {
    /// Your username.
    #[arg(short, long, env = "IMCTL_USER")]
    user: String,
    /// Your password.
    #[arg(short, long, env = "IMCTL_PASSWORD", hide_env_values = true)]
    password: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create an account.
    Register { username: String, password: String },
    /// Log in and print a token.
    Login { username: String, password: String },
    /// Send one message.
    Send {
        #[command(flatten)]
        who: Who,
        /// Recipient username.
        to: String,
        /// The text.
        #[arg(required = true)]
        text: Vec<String>,
        /// Client message id (default: random); reuse it to retry safely.
        #[arg(long)]
        id: Option<String>,
    },
    /// Print messages as they arrive (and acknowledge them).
    Listen {
        #[command(flatten)]
        who: Who,
        /// Also print what arrived before (everything after this seq).
        #[arg(long)]
        after: Option<u64>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Exit after this many seconds without a message.
        #[arg(long)]
        timeout_secs: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print stored messages after a sequence.
    History {
        #[command(flatten)]
        who: Who,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Send one message upstream to a business service (c2s).
    C2s {
        #[command(flatten)]
        who: Who,
        /// Service name (1-64 characters of a-z 0-9 _ . -).
        service: String,
        /// The text.
        #[arg(required = true)]
        text: Vec<String>,
        /// Client message id (default: random); reuse it to retry safely.
        #[arg(long)]
        id: Option<String>,
    },
    /// Push one message to users as a business server (s2c).
    S2c {
        /// Server API key (one of the server's --server-api-keys).
        #[arg(long, env = "IMCTL_API_KEY", hide_env_values = true)]
        api_key: String,
        /// Recipients: usernames or numeric user ids.
        #[arg(long, required = true, num_args = 1..)]
        to: Vec<String>,
        /// The text.
        #[arg(required = true)]
        text: Vec<String>,
        /// Client message id (default: random); reuse it to retry safely.
        #[arg(long)]
        id: Option<String>,
    },
    /// Chat with one user: type lines to send, see what arrives.
    Chat {
        #[command(flatten)]
        who: Who,
        /// The other user's username.
        peer: String,
    },
    /// Friends and blocks: requests, accept, list, keys, block.
    Friend {
        #[command(flatten)]
        who: Who,
        #[command(subcommand)]
        cmd: imctl_social::FriendCmd,
    },
    /// Groups: create, join, members, roles, mutes, messages.
    Group {
        #[command(flatten)]
        who: Who,
        #[command(subcommand)]
        cmd: imctl_social::GroupCmd,
    },
    /// Conversations: list, history, mark read, revoke.
    Conv {
        #[command(flatten)]
        who: Who,
        #[command(subcommand)]
        cmd: imctl_social::ConvCmd,
    },
}

struct Names {
    api: Api,
    token: String,
    cache: HashMap<i64, String>,
}

impl Names {
    async fn of(&mut self, id: i64) -> String {
        if id == 0 {
            // Server pushes (s2c) have no user sender.
            return "(server)".into();
        }
        if let Some(n) = self.cache.get(&id) {
            return n.clone();
        }
        let n = self
            .api
            .username(&self.token, id)
            .await
            .unwrap_or_else(|_| format!("user#{id}"));
        self.cache.insert(id, n.clone());
        n
    }

    async fn line(&mut self, m: &Message) -> String {
        let from = self.of(m.from).await;
        format!(
            "[seq {}] {}: {}",
            m.seq,
            from,
            String::from_utf8_lossy(&m.body)
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let api = Api::new(&cli.http)?;
    let endpoint = match &cli.ws {
        Some(u) => Endpoint::Ws(u.clone()),
        None => Endpoint::Tcp(cli.tcp.clone()),
    };
    let device: DeviceType = cli.device.into();
    match cli.command {
        Cmd::Register { username, password } => {
            let id = api.register(&username, &password).await?;
            println!("registered {username} (user id {id})");
        }
        Cmd::Login { username, password } => {
            println!("{}", api.login(&username, &password).await?.token);
        }
        Cmd::Send { who, to, text, id } => {
            let token = api.login(&who.user, &who.password).await?.token;
            let to_id = api
                .user_id(&token, &to)
                .await
                .with_context(|| format!("unknown user {to}"))?;
            let client = ChatClient::connect(&endpoint, &token, device, None).await?;
            let text = text.join(" ");
            let resp = match id {
                Some(id) => {
                    client
                        .send_with_id(to_id, &id, 1, text.into_bytes().into())
                        .await?
                }
                None => client.send_text(to_id, &text).await?,
            };
            println!(
                "sent: msg_id {} seq {}{}",
                resp.msg_id,
                resp.seq,
                if resp.duplicate {
                    " (duplicate of an earlier send)"
                } else {
                    ""
                }
            );
        }
        Cmd::Listen {
            who,
            after,
            count,
            timeout_secs,
            json,
        } => {
            let token = api.login(&who.user, &who.password).await?.token;
            let client = ChatClient::connect(&endpoint, &token, device, after).await?;
            let mut names = Names {
                api: api.clone(),
                token,
                cache: HashMap::new(),
            };
            let mut seen = 0usize;
            let wait = Duration::from_secs(timeout_secs.unwrap_or(u64::MAX / 4));
            eprintln!("listening as {} (Ctrl-C to stop)", who.user);
            loop {
                let batch = client.recv(wait).await?;
                if batch.is_empty() {
                    break;
                }
                for m in &batch {
                    if json {
                        let v = serde_json::json!({
                            "msg_id": m.msg_id, "seq": m.seq, "from": m.from, "to": m.to,
                            "client_msg_id": m.client_msg_id,
                            "body": String::from_utf8_lossy(&m.body), "sent_at_ms": m.sent_at_ms,
                        });
                        println!("{v}");
                    } else {
                        println!("{}", names.line(m).await);
                    }
                    seen += 1;
                }
                std::io::stdout().flush()?;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
        Cmd::History { who, after, limit } => {
            let token = api.login(&who.user, &who.password).await?.token;
            let page = api.pull(&token, after, limit).await?;
            let mut names = Names {
                api: api.clone(),
                token,
                cache: HashMap::new(),
            };
            for m in page["messages"].as_array().into_iter().flatten() {
                let from = names.of(m["from"].as_i64().unwrap_or(0)).await;
                println!(
                    "[seq {}] {}: {}",
                    m["seq"],
                    from,
                    m["body"].as_str().unwrap_or("")
                );
            }
            if page["has_more"].as_bool() == Some(true) {
                println!("(more after this; use --after)");
            }
        }
        Cmd::C2s {
            who,
            service,
            text,
            id,
        } => {
            let token = api.login(&who.user, &who.password).await?.token;
            let client = ChatClient::connect(&endpoint, &token, device, None).await?;
            let req = im_proto::client::C2sSendRequest {
                service,
                client_msg_id: id.unwrap_or_else(random_id),
                content_type: 1,
                body: text.join(" ").into_bytes().into(),
            };
            let resp = client.conn.send_c2s(req).await?;
            println!(
                "sent: stream id {}{}",
                resp.stream_id,
                if resp.duplicate {
                    " (duplicate of an earlier send)"
                } else {
                    ""
                }
            );
        }
        Cmd::S2c {
            api_key,
            to,
            text,
            id,
        } => {
            let mut ids = Vec::with_capacity(to.len());
            for name in &to {
                ids.push(match name.parse::<i64>() {
                    Ok(id) => id,
                    Err(_) => api
                        .s2c_user_id(&api_key, name)
                        .await
                        .with_context(|| format!("unknown user {name}"))?,
                });
            }
            let id = id.unwrap_or_else(random_id);
            let sent = api
                .s2c_send(&api_key, &ids, &id, 1, &text.join(" "))
                .await?;
            println!(
                "pushed: msg_id {} to {} users{}",
                sent.msg_id,
                ids.len(),
                if sent.duplicate {
                    " (duplicate of an earlier push)"
                } else {
                    ""
                }
            );
        }
        Cmd::Friend { who, cmd } => {
            let token = api.login(&who.user, &who.password).await?.token;
            imctl_social::friend(&api, &token, cmd).await?;
        }
        Cmd::Group { who, cmd } => {
            let token = api.login(&who.user, &who.password).await?.token;
            imctl_social::group(&api, &token, cmd).await?;
        }
        Cmd::Conv { who, cmd } => {
            let login = api.login(&who.user, &who.password).await?;
            imctl_social::conv(&api, &login.token, login.user_id, cmd).await?;
        }
        Cmd::Chat { who, peer } => {
            let token = api.login(&who.user, &who.password).await?.token;
            let peer_id = match api.user_id(&token, &peer).await {
                Ok(id) => id,
                Err(e) => bail!("unknown user {peer}: {e}"),
            };
            let client =
                std::sync::Arc::new(ChatClient::connect(&endpoint, &token, device, None).await?);
            let mut names = Names {
                api: api.clone(),
                token,
                cache: HashMap::new(),
            };
            eprintln!(
                "chatting with {peer} as {}; type a line and press Enter (Ctrl-D to quit)",
                who.user
            );
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            loop {
                tokio::select! {
                    line = lines.next_line() => match line? {
                        Some(l) if !l.trim().is_empty() => {
                            if let Err(e) = client.send_text(peer_id, l.trim()).await {
                                eprintln!("not sent: {e}");
                            }
                        }
                        Some(_) => {}
                        None => break,
                    },
                    batch = client.recv(Duration::from_secs(3600)) => {
                        for m in batch? {
                            println!("{}", names.line(&m).await);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// A fresh client message id.
fn random_id() -> String {
    format!("{:016x}{:08x}", im_proto::now_ms(), rand::random::<u32>())
}
