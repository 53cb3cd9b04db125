//! A ready-to-use chat client: connect, authenticate, catch up, then receive
//! messages exactly once and in sequence order, pulling whenever a gap shows.
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use im_proto::client::{
    C2cSendRequest, C2gSendRequest, ConversationType, DeviceType, Message, SendResponse,
};

use crate::conn::{ClientError, Connection, Event};
use crate::group_cursor::GroupCursors;
use crate::tracker::SeqTracker;

/// Where a gateway listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `host:port`
    Tcp(String),
    /// `ws://host:port/ws`
    Ws(String),
}

impl Endpoint {
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        match self {
            Endpoint::Tcp(a) => Connection::connect_tcp(a).await,
            Endpoint::Ws(u) => Connection::connect_ws(u).await,
        }
    }
}

pub struct ChatClient {
    pub conn: Connection,
    pub user_id: i64,
    state: Mutex<State>,
}

struct State {
    tracker: SeqTracker,
    ready: VecDeque<Message>,
    /// Client message ids this client sent (recorded before the send, so a
    /// copy pulled before the SENT reply is recognised too): not handed out.
    sent_here: HashSet<String>,
    /// Cursors of read-diffusion groups (messages outside the inbox).
    groups: GroupCursors,
    /// The last inbox sequence acknowledged on this connection: group
    /// messages do not move the inbox, so they need no ACK of their own.
    acked: u64,
    /// When an ACK held back (see [`QUIET_ACK_DELAY`]) is due.
    ack_due: Option<Instant>,
}

impl State {
    /// What is ready to hand out, without this client's own messages.
    fn take_ready(&mut self, me: i64) -> Vec<Message> {
        let ready: Vec<Message> = self.ready.drain(..).collect();
        ready
            .into_iter()
            .filter(|m| !(m.from == me && self.sent_here.remove(&m.client_msg_id)))
            .collect()
    }
}

/// Page size for catch-up pulls.
const PULL_PAGE: u32 = 500;

/// How long [`ChatClient::recv`] holds back an ACK that can produce no
/// DELIVERED receipt: one that covers no one-to-one message from another
/// user, only receipts, other system messages, group messages and this
/// user's own messages (docs/protocol.md, section 5.5, allows ACKs to be
/// debounced). Every sent message brings its sender a receipt, so without
/// this a sender would send one ACK frame a message that only settles the
/// gateway's retransmit window. Well inside the gateway's ack timeout
/// (3 s by default), so a held-back ACK never causes a retransmit there; an
/// ACK that can produce a receipt goes at once and covers what was held.
pub const QUIET_ACK_DELAY: Duration = Duration::from_millis(500);

/// How many inbox entries an ACK held back may cover before it goes at
/// once all the same: each entry came in a push the gateway keeps until an
/// ACK covers it, and a connection holding more unacknowledged pushes than
/// its outbound queue (1,024 by default) is closed as a slow consumer.
pub const QUIET_ACK_MAX_ENTRIES: u64 = 256;

impl ChatClient {
    /// Connects, authenticates and pulls everything after `last_seq`
    /// (`None`: start at the newest message, receive only what comes next).
    pub async fn connect(
        endpoint: &Endpoint,
        token: &str,
        device: DeviceType,
        last_seq: Option<u64>,
    ) -> Result<ChatClient, ClientError> {
        let conn = endpoint.connect().await?;
        let auth = conn.auth(token, device).await?;
        let last_seq = last_seq.unwrap_or(auth.max_seq);
        let client = ChatClient {
            conn,
            user_id: auth.user_id,
            state: Mutex::new(State {
                tracker: SeqTracker::new(last_seq),
                ready: VecDeque::new(),
                sent_here: HashSet::new(),
                groups: GroupCursors::default(),
                acked: 0,
                ack_due: None,
            }),
        };
        if auth.max_seq > last_seq {
            client.fill_gap(last_seq).await?;
        }
        Ok(client)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Highest contiguous sequence received.
    pub fn last_seq(&self) -> u64 {
        self.state().tracker.last()
    }

    /// Runs a send, with its client message id recorded as this client's
    /// own for as long as the server may hand the message back.
    async fn sending<T>(
        &self,
        client_msg_id: &str,
        send: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        self.state().sent_here.insert(client_msg_id.to_string());
        let r = send.await;
        if r.is_err() {
            self.state().sent_here.remove(client_msg_id);
        }
        r
    }

    /// Sends a message with an explicit client message id (for retries).
    pub async fn send_with_id(
        &self,
        to: i64,
        client_msg_id: &str,
        content_type: u32,
        body: Bytes,
    ) -> Result<SendResponse, ClientError> {
        let req = C2cSendRequest {
            to,
            client_msg_id: client_msg_id.to_string(),
            content_type,
            body: body.clone(),
        };
        let resp = self.sending(client_msg_id, self.conn.send_c2c(req)).await?;
        let own = Message {
            msg_id: resp.msg_id,
            seq: resp.seq,
            conv_type: ConversationType::C2c as i32,
            from: self.user_id,
            to,
            client_msg_id: client_msg_id.to_string(),
            content_type,
            body,
            sent_at_ms: resp.sent_at_ms,
            group_seq: 0,
        };
        let mut st = self.state();
        let offered = st.tracker.offer([own]);
        st.ready.extend(offered.ready);
        Ok(resp)
    }

    /// Sends a group message with an explicit client message id. The own
    /// copy is not handed out by [`Self::recv`] (write-diffusion groups put
    /// it in the inbox; read-diffusion groups do not).
    pub async fn send_group_with_id(
        &self,
        group: i64,
        client_msg_id: &str,
        content_type: u32,
        body: Bytes,
    ) -> Result<SendResponse, ClientError> {
        let req = C2gSendRequest {
            group_id: group,
            client_msg_id: client_msg_id.to_string(),
            content_type,
            body: body.to_vec(),
        };
        self.sending(client_msg_id, self.conn.send_c2g(req)).await
    }

    /// Sends UTF-8 text to a group with a fresh client message id.
    pub async fn send_group_text(
        &self,
        group: i64,
        text: &str,
    ) -> Result<SendResponse, ClientError> {
        let id = format!("{:016x}{:08x}", im_proto::now_ms(), rand::random::<u32>());
        self.send_group_with_id(group, &id, 1, Bytes::from(text.to_string()))
            .await
    }

    /// Pulls a read-diffusion group after its cursor (GROUP_PULL) until
    /// caught up; what was new is handed out by the next [`Self::recv`].
    /// Call it after connecting for each read-diffusion group.
    pub async fn catch_up_group(&self, group: i64) -> Result<(), ClientError> {
        loop {
            let after = self.group_cursor(group);
            let page = self.conn.group_pull(group, after, PULL_PAGE).await?;
            let end = page.messages.last().map(|m| m.group_seq).unwrap_or(after);
            let mut st = self.state();
            for m in page.messages {
                if st.groups.offer(&m) {
                    st.ready.push_back(m);
                }
            }
            // A page is contiguous: everything up to `end` is held now.
            st.groups.set(group, end);
            if !page.has_more || end <= after {
                return Ok(());
            }
        }
    }

    /// Starts a read-diffusion group's cursor (e.g. at the group's
    /// `max_group_seq` from REST): only later group messages are handed out.
    pub fn set_group_cursor(&self, group: i64, last: u64) {
        self.state().groups.set(group, last);
    }

    /// Everything of a read-diffusion group up to this sequence was received.
    pub fn group_cursor(&self, group: i64) -> u64 {
        self.state().groups.last(group)
    }

    /// Sends UTF-8 text with a fresh client message id.
    pub async fn send_text(&self, to: i64, text: &str) -> Result<SendResponse, ClientError> {
        let id = format!("{:016x}{:08x}", im_proto::now_ms(), rand::random::<u32>());
        self.send_with_id(to, &id, 1, Bytes::from(text.to_string()))
            .await
    }

    /// Replaces a broken connection: connects (to `endpoint`, which may be
    /// another gateway), authenticates and pulls everything after the last
    /// contiguous sequence. What was received but not yet handed out is kept.
    pub async fn reconnect(
        &mut self,
        endpoint: &Endpoint,
        token: &str,
        device: DeviceType,
    ) -> Result<(), ClientError> {
        let conn = endpoint.connect().await?;
        let auth = conn.auth(token, device).await?;
        self.conn = conn;
        {
            let mut st = self.state();
            st.acked = 0;
            st.ack_due = None;
        }
        let last = self.last_seq();
        if auth.max_seq > last {
            self.fill_gap(last).await?;
        }
        Ok(())
    }

    /// Pulls whatever is newer than the last contiguous sequence (a periodic
    /// sync catches pushes lost while a route was briefly missing).
    pub async fn sync(&self) -> Result<(), ClientError> {
        self.fill_gap(self.last_seq()).await
    }

    /// Pulls pages after `after` until the gap is filled.
    async fn fill_gap(&self, mut after: u64) -> Result<(), ClientError> {
        loop {
            let page = self.conn.pull(after, PULL_PAGE).await?;
            let page_end = page.messages.last().map(|m| m.seq).unwrap_or(after);
            let mut st = self.state();
            let offered = st.tracker.offer(page.messages);
            st.ready.extend(offered.ready);
            if !page.has_more || page_end <= after {
                return Ok(());
            }
            after = page_end;
        }
    }

    /// The next messages in seq order (others' and this user's other
    /// devices'), waiting up to `wait`. Empty on timeout. Acknowledges them:
    /// at once when they hold a one-to-one message from another user (its
    /// sender waits for the DELIVERED receipt), else within
    /// [`QUIET_ACK_DELAY`] (on this or a later call).
    pub async fn recv(&self, wait: Duration) -> Result<Vec<Message>, ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            let out = self.take_ready();
            if !out.is_empty() {
                let receipted = out.iter().any(|m| {
                    im_proto::delivered_receipt_to(
                        m.conv_type,
                        m.from,
                        m.content_type,
                        self.user_id,
                    )
                    .is_some()
                });
                self.settle(receipted, true).await?;
                return Ok(out);
            }
            self.settle(false, false).await?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let wake = self
                .state()
                .ack_due
                .map_or(deadline, |due| due.min(deadline));
            match self
                .conn
                .next_event_timeout(wake.saturating_duration_since(now))
                .await
            {
                // The deadline or a held-back ACK's time: the loop sees which.
                Err(ClientError::Timeout) => {}
                Err(e) => return Err(e),
                Ok(None) => return Err(ClientError::Closed),
                Ok(Some(Event::Push(messages))) => {
                    let gap = {
                        let mut st = self.state();
                        let (group, messages): (Vec<_>, Vec<_>) =
                            messages.into_iter().partition(GroupCursors::is_group_seq);
                        for m in group {
                            if st.groups.offer(&m) {
                                st.ready.push_back(m);
                            }
                        }
                        let offered = st.tracker.offer(messages);
                        st.ready.extend(offered.ready);
                        (offered.pull_after, st.groups.gaps())
                    };
                    let (gap, group_gaps) = gap;
                    for (group, _) in group_gaps {
                        self.catch_up_group(group).await?;
                    }
                    if let Some(after) = gap {
                        self.fill_gap(after).await?;
                    }
                }
                Ok(Some(Event::Kickout(k))) => {
                    return Err(ClientError::Server {
                        code: -1,
                        message: format!("kicked out: {}", k.message),
                        retryable: false,
                    });
                }
                Ok(Some(Event::Ctrl(_))) | Ok(Some(Event::Error(_))) => {}
            }
        }
    }

    fn take_ready(&self) -> Vec<Message> {
        self.state().take_ready(self.user_id)
    }

    /// Acknowledges the last contiguous sequence if it is not yet: now when
    /// `now` is set, a held-back ACK is due, or something was handed out
    /// (`handed_out`) and the ACK would cover [`QUIET_ACK_MAX_ENTRIES`];
    /// otherwise, when something was handed out, within
    /// [`QUIET_ACK_DELAY`]. Nothing handed out and nothing held back (only
    /// this user's own messages since the last ACK): no ACK, as before.
    async fn settle(&self, now: bool, handed_out: bool) -> Result<(), ClientError> {
        let last = self.last_seq();
        let at = Instant::now();
        let send = {
            let mut st = self.state();
            if st.acked >= last {
                st.ack_due = None;
                false
            } else if now
                || st.ack_due.is_some_and(|due| due <= at)
                || (handed_out && last - st.acked >= QUIET_ACK_MAX_ENTRIES)
            {
                st.acked = last;
                st.ack_due = None;
                true
            } else {
                if handed_out {
                    st.ack_due.get_or_insert(at + QUIET_ACK_DELAY);
                }
                false
            }
        };
        if send {
            self.conn.ack(last).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_proto::frame::Frame;

    /// An own message pulled (say, to fill a gap a receipt opened) before
    /// its SENT reply arrived is still recognised as this client's own.
    #[test]
    fn own_copy_pulled_before_the_sent_reply_is_not_handed_out() {
        let mut st = State {
            tracker: SeqTracker::new(0),
            ready: VecDeque::new(),
            sent_here: HashSet::new(),
            groups: GroupCursors::default(),
            acked: 0,
            ack_due: None,
        };
        // Recorded when the send starts; no SENT reply (no msg_id) yet.
        st.sent_here.insert("c1".into());
        let msg = |seq, from, id: &str| Message {
            seq,
            from,
            client_msg_id: id.into(),
            ..Default::default()
        };
        let offered = st
            .tracker
            .offer([msg(1, 7, "c1"), msg(2, 9, "c1"), msg(3, 7, "c2")]);
        st.ready.extend(offered.ready);
        let out: Vec<u64> = st.take_ready(7).iter().map(|m| m.seq).collect();
        // Its own "c1" is held back; another user's "c1" and an own message
        // sent from another device ("c2") are handed out.
        assert_eq!(out, vec![2, 3]);
        assert!(st.sent_here.is_empty());
    }

    /// A scripted gateway: answers AUTH (user 7, empty inbox), then hands
    /// the test the frames the client sends, and pushes what it is given.
    async fn scripted_gateway() -> (
        Endpoint,
        tokio::sync::mpsc::UnboundedSender<Vec<Message>>,
        tokio::sync::mpsc::UnboundedReceiver<(Instant, Frame)>,
    ) {
        use futures::{SinkExt, StreamExt};
        use im_proto::client::{AuthResponse, Push};
        use im_proto::frame::{Command, FrameCodec};
        use im_proto::prost::Message as _;
        use tokio_util::codec::Framed;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (push_tx, mut push_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Message>>();
        let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut framed = Framed::new(socket, FrameCodec::new(1 << 20));
            loop {
                tokio::select! {
                    f = framed.next() => {
                        let Some(Ok(f)) = f else { return };
                        if f.command() == Some(Command::Auth) {
                            let resp = AuthResponse { user_id: 7, ..Default::default() };
                            let r = Frame::response(f.command, f.seq, resp.encode_to_vec());
                            framed.send(r).await.unwrap();
                        } else {
                            let _ = seen_tx.send((Instant::now(), f));
                        }
                    }
                    Some(messages) = push_rx.recv() => {
                        let push = Frame::request(Command::Push, 0, Push { messages }.encode_to_vec());
                        framed.send(push).await.unwrap();
                    }
                }
            }
        });
        (Endpoint::Tcp(addr.to_string()), push_tx, seen_rx)
    }

    /// The ACKed sequence of the next frame the client sends, if an ACK.
    fn acked_seq(f: &Frame) -> Option<u64> {
        use im_proto::client::Ack;
        use im_proto::frame::Command;
        use im_proto::prost::Message as _;
        (f.command() == Some(Command::Ack)).then(|| Ack::decode(f.body.clone()).unwrap().seq)
    }

    /// A push of only receipts is acknowledged within QUIET_ACK_DELAY, not
    /// at once; a one-to-one message from another user at once, covering
    /// what was held back.
    #[tokio::test]
    async fn acks_wait_unless_a_receipt_is_owed() {
        use im_proto::client::SystemContentType;
        let (endpoint, push, mut seen) = scripted_gateway().await;
        let client = ChatClient::connect(&endpoint, "t", DeviceType::Mobile, None)
            .await
            .unwrap();
        let msg = |seq, content_type| Message {
            seq,
            from: 9,
            to: 7,
            conv_type: ConversationType::C2c as i32,
            content_type,
            client_msg_id: format!("m{seq}"),
            ..Default::default()
        };
        let receipt = SystemContentType::Receipt as u32;

        // A receipt: handed out, ACKed only when the delay is up (during a
        // later recv that gets nothing).
        push.send(vec![msg(1, receipt)]).unwrap();
        let start = Instant::now();
        assert_eq!(client.recv(Duration::from_secs(5)).await.unwrap().len(), 1);
        assert!(seen.try_recv().is_err(), "no ACK at once for a receipt");
        let none = client.recv(QUIET_ACK_DELAY * 2).await.unwrap();
        assert!(none.is_empty());
        let (at, f) = seen.recv().await.unwrap();
        assert_eq!(acked_seq(&f), Some(1));
        let waited = at - start;
        assert!(
            waited >= QUIET_ACK_DELAY && waited < QUIET_ACK_DELAY * 2,
            "{waited:?}"
        );

        // Another receipt, then a message from user 9 before the delay is
        // up: one ACK, at once, covering both.
        push.send(vec![msg(2, receipt)]).unwrap();
        assert_eq!(client.recv(Duration::from_secs(5)).await.unwrap().len(), 1);
        push.send(vec![msg(3, 1)]).unwrap();
        let sent = Instant::now();
        assert_eq!(client.recv(Duration::from_secs(5)).await.unwrap().len(), 1);
        let (at, f) = seen.recv().await.unwrap();
        assert_eq!(acked_seq(&f), Some(3));
        assert!(at - sent < QUIET_ACK_DELAY, "{:?}", at - sent);
        let none = client.recv(QUIET_ACK_DELAY * 2).await.unwrap();
        assert!(none.is_empty());
        assert!(seen.try_recv().is_err(), "nothing left to acknowledge");

        // Receipts enough to fill the gateway's window go at once.
        let many = QUIET_ACK_MAX_ENTRIES;
        push.send((4..4 + many).map(|seq| msg(seq, receipt)).collect())
            .unwrap();
        let sent = Instant::now();
        let got = client.recv(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len() as u64, many);
        let (at, f) = tokio::time::timeout(QUIET_ACK_DELAY, seen.recv())
            .await
            .expect("an ACK at once")
            .unwrap();
        assert_eq!(acked_seq(&f), Some(3 + many));
        assert!(at - sent < QUIET_ACK_DELAY, "{:?}", at - sent);
    }
}
