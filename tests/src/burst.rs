//! A burst of messages between many users over a cluster while something
//! fails: clients reconnect (to another gateway if theirs died), resend what
//! was not acknowledged with the same client message id, and at the end the
//! exact-once, in-order and receipt-once promises are checked.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use im_client::{ChatClient, ClientError, DeviceType, Endpoint};
use im_proto::client::{Message, Receipt, ReceiptKind, SystemContentType};
use im_proto::prost::Message as _;
use tokio::sync::RwLock;

use crate::TestUser;

/// What one simulated user saw.
#[derive(Default)]
struct Seen {
    /// (from, client_msg_id) → times received
    messages: HashMap<(i64, String), usize>,
    /// seqs in the order received (must ascend)
    seqs: Vec<u64>,
    /// msg_id → DELIVERED receipts received for it
    receipts: HashMap<i64, usize>,
}

struct Sim {
    user: TestUser,
    client: RwLock<ChatClient>,
    generation: AtomicUsize,
    seen: std::sync::Mutex<Seen>,
    /// client_msg_id → msg_id of what this user sent
    sent: std::sync::Mutex<BTreeMap<String, i64>>,
}

pub struct Burst {
    pub users: Vec<TestUser>,
    pub endpoints: Vec<Endpoint>,
    pub per_user: usize,
}

/// Totals, for the test's report.
#[derive(Debug)]
pub struct BurstReport {
    pub sent: usize,
    pub duplicates_acknowledged: usize,
    pub reconnects: usize,
    pub elapsed: Duration,
}

fn retryable(e: &ClientError) -> bool {
    e.is_retryable()
}

impl Sim {
    fn record(&self, batch: Vec<Message>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for m in batch {
            seen.seqs.push(m.seq);
            if m.content_type == SystemContentType::Receipt as u32 {
                if let Ok(r) = Receipt::decode(m.body.clone())
                    && r.kind == ReceiptKind::Delivered as i32
                    && r.reader != self.user.id
                {
                    for id in r.msg_ids {
                        *seen.receipts.entry(id).or_default() += 1;
                    }
                }
            } else if m.from != self.user.id {
                *seen
                    .messages
                    .entry((m.from, m.client_msg_id.clone()))
                    .or_default() += 1;
            }
        }
    }

    /// Reconnects once per broken generation, trying each endpoint in turn.
    async fn reconnect(
        &self,
        seen_generation: usize,
        endpoints: &[Endpoint],
        reconnects: &AtomicUsize,
    ) {
        let mut client = self.client.write().await;
        if self.generation.load(Ordering::SeqCst) != seen_generation {
            return; // someone else already reconnected
        }
        let start = self.user.id as usize;
        for attempt in 0.. {
            let ep = &endpoints[(start + attempt) % endpoints.len()];
            match client
                .reconnect(ep, &self.user.token, DeviceType::Desktop)
                .await
            {
                Ok(()) => break,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100 + 50 * (attempt as u64).min(10)))
                        .await
                }
            }
            if attempt > 600 {
                break;
            }
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

impl Burst {
    /// Runs the burst; `fault` runs once `fault_at` messages are stored.
    pub async fn run<F, Fut>(&self, fault_at: usize, fault: F) -> anyhow::Result<BurstReport>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let started = Instant::now();
        let n = self.users.len();
        let mut sims = Vec::new();
        for (i, u) in self.users.iter().enumerate() {
            let ep = &self.endpoints[i % self.endpoints.len()];
            let client = ChatClient::connect(ep, &u.token, DeviceType::Desktop, Some(0))
                .await
                .with_context(|| format!("connect {}", u.name))?;
            sims.push(Arc::new(Sim {
                user: u.clone(),
                client: RwLock::new(client),
                generation: AtomicUsize::new(0),
                seen: Default::default(),
                sent: Default::default(),
            }));
        }
        let stored = Arc::new(AtomicUsize::new(0));
        let dups = Arc::new(AtomicUsize::new(0));
        let reconnects = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let endpoints = Arc::new(self.endpoints.clone());
        let ids: Vec<i64> = self.users.iter().map(|u| u.id).collect();

        // Receivers.
        let mut receivers = Vec::new();
        for sim in &sims {
            let (sim, stop, endpoints, reconnects) = (
                sim.clone(),
                stop.clone(),
                endpoints.clone(),
                reconnects.clone(),
            );
            receivers.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let generation = sim.generation.load(Ordering::SeqCst);
                    let r = sim
                        .client
                        .read()
                        .await
                        .recv(Duration::from_millis(200))
                        .await;
                    match r {
                        Ok(batch) => sim.record(batch),
                        Err(_) => sim.reconnect(generation, &endpoints, &reconnects).await,
                    }
                }
            }));
        }
        // Senders: message k of user i goes to user (i + 1 + k % (n - 1)) % n.
        let mut senders = Vec::new();
        for (i, sim) in sims.iter().enumerate() {
            let (sim, stored, dups, endpoints, reconnects, ids) = (
                sim.clone(),
                stored.clone(),
                dups.clone(),
                endpoints.clone(),
                reconnects.clone(),
                ids.clone(),
            );
            let per_user = self.per_user;
            senders.push(tokio::spawn(async move {
                for k in 0..per_user {
                    let to = ids[(i + 1 + k % (n - 1)) % n];
                    let cmid = format!("m{i}-{k}");
                    let body = Bytes::from(format!("{i}:{k}"));
                    let deadline = Instant::now() + Duration::from_secs(120);
                    loop {
                        let generation = sim.generation.load(Ordering::SeqCst);
                        let r = sim
                            .client
                            .read()
                            .await
                            .send_with_id(to, &cmid, 1, body.clone())
                            .await;
                        match r {
                            Ok(resp) => {
                                if resp.duplicate {
                                    dups.fetch_add(1, Ordering::Relaxed);
                                }
                                sim.sent
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert(cmid.clone(), resp.msg_id);
                                stored.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Err(e) if retryable(&e) && Instant::now() < deadline => {
                                if sim.client.read().await.conn.is_closed()
                                    || matches!(e, ClientError::Closed | ClientError::Timeout)
                                {
                                    sim.reconnect(generation, &endpoints, &reconnects).await;
                                } else {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                            Err(e) => return Err(anyhow::anyhow!("send {cmid} failed: {e}")),
                        }
                    }
                }
                anyhow::Ok(())
            }));
        }
        // The fault, in the middle of the burst.
        let deadline = Instant::now() + Duration::from_secs(120);
        while stored.load(Ordering::SeqCst) < fault_at {
            if Instant::now() > deadline {
                bail!(
                    "burst stalled before the fault at {} stored",
                    stored.load(Ordering::SeqCst)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fault().await?;
        for s in senders {
            s.await??;
        }
        let total = n * self.per_user;
        // Settle: every message received once, every receipt back once.
        let settle = Instant::now() + Duration::from_secs(90);
        loop {
            let complete = sims.iter().all(|s| self.complete_for(s, &sims));
            if complete || Instant::now() > settle {
                break;
            }
            for s in &sims {
                let generation = s.generation.load(Ordering::SeqCst);
                let r = s.client.read().await.sync().await;
                if r.is_err() {
                    s.reconnect(generation, &endpoints, &reconnects).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        stop.store(true, Ordering::SeqCst);
        for r in receivers {
            r.await?;
        }
        self.check(&sims)?;
        Ok(BurstReport {
            sent: total,
            duplicates_acknowledged: dups.load(Ordering::Relaxed),
            reconnects: reconnects.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        })
    }

    fn expected_for(&self, sims: &[Arc<Sim>], r: usize) -> BTreeMap<(i64, String), usize> {
        let n = sims.len();
        let mut want = BTreeMap::new();
        for (i, sim) in sims.iter().enumerate() {
            for k in 0..self.per_user {
                if (i + 1 + k % (n - 1)) % n == r {
                    want.insert((sim.user.id, format!("m{i}-{k}")), 1);
                }
            }
        }
        want
    }

    fn complete_for(&self, sim: &Arc<Sim>, sims: &[Arc<Sim>]) -> bool {
        let r = sims.iter().position(|s| Arc::ptr_eq(s, sim)).unwrap_or(0);
        let want = self.expected_for(sims, r);
        let seen = sim.seen.lock().unwrap_or_else(|e| e.into_inner());
        let sent = sim.sent.lock().unwrap_or_else(|e| e.into_inner());
        seen.messages.len() == want.len() && sent.values().all(|id| seen.receipts.contains_key(id))
    }

    fn check(&self, sims: &[Arc<Sim>]) -> anyhow::Result<()> {
        for (r, sim) in sims.iter().enumerate() {
            let want = self.expected_for(sims, r);
            let seen = sim.seen.lock().unwrap_or_else(|e| e.into_inner());
            let got: BTreeMap<(i64, String), usize> =
                seen.messages.iter().map(|(k, v)| (k.clone(), *v)).collect();
            if got != want {
                let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
                let dup = got.values().filter(|v| **v > 1).count();
                let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
                bail!(
                    "{}: {missing} missing, {dup} duplicated, {extra} unexpected of {}",
                    sim.user.name,
                    want.len()
                );
            }
            if !seen.seqs.windows(2).all(|w| w[0] < w[1]) {
                bail!("{}: messages out of sequence order", sim.user.name);
            }
            let sent = sim.sent.lock().unwrap_or_else(|e| e.into_inner());
            if sent.len() != self.per_user {
                bail!(
                    "{}: {} of {} sends acknowledged",
                    sim.user.name,
                    sent.len(),
                    self.per_user
                );
            }
            for id in sent.values() {
                match seen.receipts.get(id) {
                    Some(1) => {}
                    Some(n) => bail!("{}: receipt for {id} delivered {n} times", sim.user.name),
                    None => bail!("{}: no DELIVERED receipt for {id}", sim.user.name),
                }
            }
            if seen.receipts.len() != sent.len() {
                bail!("{}: receipts for messages it did not send", sim.user.name);
            }
        }
        Ok(())
    }
}
