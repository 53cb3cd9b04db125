//! Turns committed inbox entries into per-gateway push batches; it never
//! touches storage, and a failed push loses nothing (the inbox is the truth).
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use im_common::api::GatewayApi;
use im_common::route::{LiveRoute, Route, RouteTable};
use im_proto::logic::{PushBatch, PushItem};
use tokio::sync::{mpsc, oneshot};

use crate::metrics;
use crate::store::Delivery;

/// The connection a message came from; its own copy is not pushed back to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub gate_id: String,
    pub conn_id: u64,
}

/// A delivery plus the connection that sent it.
pub type Outgoing = (Delivery, Option<Origin>);

/// Groups deliveries by gateway address: one item per user with all that
/// user's messages (ascending seq) and every live connection of the user.
pub fn plan_pushes(
    deliveries: &[Outgoing],
    routes: &HashMap<i64, Vec<LiveRoute>>,
) -> HashMap<String, PushBatch> {
    // (addr, user, origin conn excluded) -> item index in that batch
    let mut batches: HashMap<String, PushBatch> = HashMap::new();
    let mut slots: HashMap<(String, i64, Option<u64>), usize> = HashMap::new();
    for (d, origin) in deliveries {
        let Some(live) = routes.get(&d.user) else {
            continue;
        };
        let excluded = origin.as_ref().filter(|_| d.user == d.message.from);
        let mut by_gate: HashMap<&str, Vec<u64>> = HashMap::new();
        for r in live {
            if excluded
                .is_some_and(|o| o.gate_id == r.route.gate_id && o.conn_id == r.route.conn_id)
            {
                continue;
            }
            by_gate
                .entry(r.gate_addr.as_str())
                .or_default()
                .push(r.route.conn_id);
        }
        for (addr, mut conns) in by_gate {
            conns.sort_unstable();
            let key = (addr.to_string(), d.user, excluded.map(|o| o.conn_id));
            let batch = batches.entry(addr.to_string()).or_default();
            match slots.get(&key) {
                Some(&i) => batch.items[i].messages.push(d.message.clone()),
                None => {
                    slots.insert(key, batch.items.len());
                    batch.items.push(PushItem {
                        conn_ids: conns,
                        messages: vec![d.message.clone()],
                    });
                }
            }
        }
    }
    batches
}

/// Delivers batches in the order they were committed. A router looks up
/// the routes of whatever committed meanwhile (one Redis call) and hands
/// each gateway its part; one lane per gateway makes the calls, one after
/// the other, merging parts that queued behind a call in flight. The router
/// waits for its parts' calls before the next lookup, so that what commits
/// meanwhile goes out together (one lookup and one call per gateway for
/// many batches), but not for a gateway that has kept it waiting
/// [`STALL`]: until that gateway's lane has caught up, the router leaves
/// parts in its queue without waiting and drops those that find the queue
/// full (the messages stay in the inbox, and clients pull the gap). So a
/// gateway that stops answering holds back no other gateway's pushes.
#[derive(Clone)]
pub struct Pusher {
    tx: mpsc::Sender<(Instant, Vec<Outgoing>)>,
}

/// How long the router waits for a gateway's call before it stops waiting
/// for that gateway.
pub const STALL: Duration = Duration::from_millis(500);

/// What a lane holds at most, beyond the part in flight, counted in
/// messages and in the users of the route maps its parts keep (one for
/// each part besides): a gateway that stops answering gets this much
/// queued before pushes to it are dropped; a slow one a few seconds of
/// pushes (a push call has 5 s before it fails). ~10 MB at most.
const LANE_MAX_QUEUED: usize = 65_536;

/// Parts a lane holds, whatever they weigh (many small parts queue while
/// the router no longer waits for a lane).
const LANE_PARTS: usize = 8_192;

/// A lane with nothing to push for this long ends (a gateway that went
/// away leaves no task behind); the next part starts a new one.
const LANE_IDLE: Duration = Duration::from_secs(30);

impl Pusher {
    pub fn start(routes: Arc<dyn RouteTable>, gateways: Arc<dyn GatewayApi>) -> Pusher {
        Pusher::with_lanes(routes.clone(), Lanes::new(routes, gateways))
    }

    fn with_lanes(routes: Arc<dyn RouteTable>, mut lanes: Lanes) -> Pusher {
        let (tx, mut rx) = mpsc::channel::<(Instant, Vec<Outgoing>)>(256);
        tokio::spawn(async move {
            let mut queued: Vec<(Instant, Vec<Outgoing>)> = Vec::new();
            while rx.recv_many(&mut queued, 64).await > 0 {
                let since = queued[0].0;
                let batch: Vec<Outgoing> = queued.drain(..).flat_map(|(_, b)| b).collect();
                route_once(routes.as_ref(), &mut lanes, batch, since).await;
            }
        });
        Pusher { tx }
    }

    pub async fn dispatch(&self, deliveries: Vec<Outgoing>) {
        if deliveries.is_empty() {
            return;
        }
        if self.tx.send((Instant::now(), deliveries)).await.is_err() {
            tracing::warn!("pusher stopped; messages stay in the inbox");
        }
    }
}

/// The routes a batch was planned with, shared by its parts.
type Live = Arc<HashMap<i64, Vec<LiveRoute>>>;

/// One gateway's part of a routed batch: the push, the routes it was
/// planned with (those to connections the gateway no longer has are
/// removed), and whom to tell once its call is done.
struct Part {
    batch: PushBatch,
    live: Live,
    done: Option<oneshot::Sender<()>>,
    /// When its batch (the earliest of those merged) reached the pusher.
    since: Instant,
}

impl Part {
    fn weight(&self) -> usize {
        let messages: usize = self.batch.items.iter().map(|i| i.messages.len()).sum();
        messages + self.live.len() + 1
    }
}

struct Lane {
    tx: mpsc::Sender<Part>,
    task: tokio::task::JoinHandle<()>,
    /// The weight of the parts sent and not yet pushed (or failed).
    pending: Arc<AtomicUsize>,
    /// The lane kept the router waiting [`STALL`] and has not caught up since.
    stalled: bool,
}

/// Push calls to gateways, a lane per gateway, for a router that hands
/// them their parts in order (see [`Pusher`]; the group pusher too).
pub struct Lanes {
    routes: Arc<dyn RouteTable>,
    gateways: Arc<dyn GatewayApi>,
    idle: Duration,
    max_queued: usize,
    open: HashMap<String, Lane>,
}

impl Lanes {
    pub fn new(routes: Arc<dyn RouteTable>, gateways: Arc<dyn GatewayApi>) -> Lanes {
        Lanes::with_limits(routes, gateways, LANE_IDLE, LANE_MAX_QUEUED)
    }

    fn with_limits(
        routes: Arc<dyn RouteTable>,
        gateways: Arc<dyn GatewayApi>,
        idle: Duration,
        max_queued: usize,
    ) -> Lanes {
        Lanes {
            routes,
            gateways,
            idle,
            max_queued,
            open: HashMap::new(),
        }
    }

    /// Queues each gateway's push on its lane, then waits for the calls,
    /// so that what commits meanwhile goes out together, but at most
    /// [`STALL`]: a gateway whose call takes longer is not waited for again
    /// until its lane has caught up. `live` holds the routes the pushes
    /// were planned with: those to connections a gateway no longer has are
    /// removed. `since` is when the batch (the earliest of those merged)
    /// reached the pusher, for [`metrics::PUSH_TIME`].
    pub async fn push(&mut self, plans: HashMap<String, PushBatch>, live: Live, since: Instant) {
        let mut waits = Vec::new();
        for (addr, batch) in plans {
            let part = Part {
                batch,
                live: live.clone(),
                done: None,
                since,
            };
            if let Some(wait) = self.send(&addr, part) {
                waits.push((addr, wait));
            }
        }
        let deadline = tokio::time::Instant::now() + STALL;
        for (addr, wait) in waits {
            if tokio::time::timeout_at(deadline, wait).await.is_err()
                && let Some(lane) = self.open.get_mut(&addr)
            {
                tracing::warn!(gateway = %addr, "gateway slow to take pushes; not waiting for it");
                lane.stalled = true;
            }
        }
    }

    /// Queues `part` on its gateway's lane; returns what to wait on, unless
    /// the lane is stalled. A part that finds the lane full is dropped.
    fn send(&mut self, addr: &str, mut part: Part) -> Option<oneshot::Receiver<()>> {
        let weight = part.weight();
        loop {
            let mut lane = match self.open.remove(addr) {
                Some(lane) => lane,
                None => self.spawn(addr, None),
            };
            let pending = lane.pending.fetch_add(weight, Ordering::AcqRel);
            lane.stalled &= pending > 0;
            if pending > 0 && pending + weight > self.max_queued {
                lane.pending.fetch_sub(weight, Ordering::AcqRel);
                self.open.insert(addr.to_string(), lane);
                return drop_part(addr);
            }
            let (done, wait) = if lane.stalled {
                (None, None)
            } else {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            };
            part.done = done;
            match lane.tx.try_send(part) {
                Ok(()) => {
                    self.open.insert(addr.to_string(), lane);
                    return wait;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    lane.pending.fetch_sub(weight, Ordering::AcqRel);
                    self.open.insert(addr.to_string(), lane);
                    return drop_part(addr);
                }
                // The lane ended while idle: a new one pushes after it has
                // pushed what it still held, so the order holds.
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    lane.pending.fetch_sub(weight, Ordering::AcqRel);
                    part = back;
                    let next = self.spawn(addr, Some(lane.task));
                    self.open.insert(addr.to_string(), next);
                }
            }
        }
    }

    fn spawn(&self, addr: &str, after: Option<tokio::task::JoinHandle<()>>) -> Lane {
        let (tx, rx) = mpsc::channel(LANE_PARTS);
        let pending = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(lane(
            addr.to_string(),
            (self.routes.clone(), self.gateways.clone()),
            (rx, pending.clone(), self.idle),
            after,
        ));
        Lane {
            tx,
            task,
            pending,
            stalled: false,
        }
    }
}

/// A gateway's lane is full: the part is not pushed, its messages wait
/// in the inbox (or the group) for their recipients to pull them.
fn drop_part(addr: &str) -> Option<oneshot::Receiver<()>> {
    tracing::warn!(gateway = %addr, "gateway behind; push dropped, recipients pull the messages");
    metrics::PUSH_FAILURES.inc();
    None
}

async fn lane(
    addr: String,
    (routes_table, gateways): (Arc<dyn RouteTable>, Arc<dyn GatewayApi>),
    (mut rx, pending, idle): (mpsc::Receiver<Part>, Arc<AtomicUsize>, Duration),
    after: Option<tokio::task::JoinHandle<()>>,
) {
    if let Some(previous) = after {
        let _ = previous.await;
    }
    let mut queued: Vec<Part> = Vec::new();
    loop {
        match tokio::time::timeout(idle, rx.recv_many(&mut queued, LANE_PARTS)).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => {
                // Refuse new parts, then push what arrived meanwhile.
                rx.close();
                while let Ok(part) = rx.try_recv() {
                    queued.push(part);
                }
                if queued.is_empty() {
                    return;
                }
            }
        }
        let mut batch = PushBatch::default();
        let mut planned: Vec<Live> = Vec::new();
        let mut done = Vec::new();
        let mut since = Vec::new();
        let weight: usize = queued.iter().map(Part::weight).sum();
        for part in queued.drain(..) {
            batch.items.extend(part.batch.items);
            if !planned.iter().any(|l| Arc::ptr_eq(l, &part.live)) {
                planned.push(part.live);
            }
            done.extend(part.done);
            since.push(part.since);
        }
        push_part(
            routes_table.as_ref(),
            gateways.as_ref(),
            &addr,
            batch,
            &planned,
        )
        .await;
        pending.fetch_sub(weight, Ordering::AcqRel);
        for at in since {
            metrics::PUSH_TIME.observe(at.elapsed().as_secs_f64());
        }
        for d in done {
            let _ = d.send(());
        }
        if rx.is_closed() && rx.is_empty() {
            return;
        }
    }
}

/// Pushes one gateway's merged parts; routes to connections it no longer
/// has (it restarted) are stale and removed.
async fn push_part(
    routes_table: &dyn RouteTable,
    gateways: &dyn GatewayApi,
    addr: &str,
    batch: PushBatch,
    planned: &[Live],
) {
    let missing = match push_in_calls(gateways, addr, batch).await {
        Ok(missing) => missing,
        Err(e) => {
            tracing::warn!(gateway = %addr, error = %e, "push failed; the recipients pull the messages");
            metrics::PUSH_FAILURES.inc();
            return;
        }
    };
    if missing.is_empty() {
        return;
    }
    let mut stale: Vec<(i64, &Route)> = planned
        .iter()
        .flat_map(|live| live.iter())
        .flat_map(|(user, routes)| routes.iter().map(move |r| (*user, r)))
        .filter(|(_, r)| r.gate_addr == addr && missing.contains(&r.route.conn_id))
        .map(|(user, r)| (user, &r.route))
        .collect();
    stale.sort_unstable_by_key(|(user, r)| (*user, r.conn_id));
    stale.dedup_by_key(|(user, r)| (*user, r.conn_id));
    for (user, route) in stale {
        if let Err(e) = routes_table.remove_route(user, route).await {
            tracing::debug!(error = %e, "failed to remove stale route");
        }
    }
}

/// The most message bytes in one push call. A write-diffusion group message
/// is one copy per member, each with its own sequence: 60 KB to 100 members
/// on one gateway was a 6 MB call, over the 4 MB a gRPC server decodes by
/// default, and the push failed.
pub const PUSH_CALL_BYTES: usize = 1024 * 1024;

/// Splits a batch into calls of at most `budget` bytes of messages, in
/// order: items in sequence, a user's messages split across consecutive
/// items when they do not fit (a message larger than the budget goes alone).
pub fn split_batch(batch: PushBatch, budget: usize) -> Vec<PushBatch> {
    if batch.items.is_empty() {
        return Vec::new();
    }
    // The usual push (small messages) as it is.
    if im_proto::prost::Message::encoded_len(&batch) <= budget {
        return vec![batch];
    }
    let mut calls = vec![PushBatch::default()];
    let mut used = 0;
    for item in batch.items {
        let mut piece = PushItem {
            conn_ids: item.conn_ids.clone(),
            messages: Vec::new(),
        };
        for m in item.messages {
            let size = im_proto::prost::Message::encoded_len(&m);
            if used + size > budget && used > 0 {
                if !piece.messages.is_empty() {
                    let next = PushItem {
                        conn_ids: item.conn_ids.clone(),
                        messages: Vec::new(),
                    };
                    calls
                        .last_mut()
                        .expect("one")
                        .items
                        .push(std::mem::replace(&mut piece, next));
                }
                calls.push(PushBatch::default());
                used = 0;
            }
            used += size;
            piece.messages.push(m);
        }
        if !piece.messages.is_empty() {
            calls.last_mut().expect("one").items.push(piece);
        }
    }
    calls.retain(|c| !c.items.is_empty());
    calls
}

/// Pushes `batch` to one gateway in calls of at most [`PUSH_CALL_BYTES`],
/// one after the other; returns the connection ids it no longer has. After a
/// failed call the rest is not sent (it is in the inbox or the group).
pub async fn push_in_calls(
    gateways: &dyn GatewayApi,
    addr: &str,
    batch: PushBatch,
) -> Result<Vec<u64>, im_common::api::ApiError> {
    let mut missing = Vec::new();
    for part in split_batch(batch, PUSH_CALL_BYTES) {
        missing.extend(gateways.push(addr, part).await?.missing_conn_ids);
    }
    Ok(missing)
}

/// Looks up the routes of one merged batch and hands each gateway its part.
async fn route_once(
    routes_table: &dyn RouteTable,
    lanes: &mut Lanes,
    deliveries: Vec<Outgoing>,
    since: Instant,
) {
    let mut users: Vec<i64> = deliveries.iter().map(|(d, _)| d.user).collect();
    users.sort_unstable();
    users.dedup();
    // One retry: after a Redis restart the first command on the old
    // connection fails and the connection manager reconnects.
    let first = routes_table.lookup(&users).await;
    let retried = match first {
        Ok(l) => Ok(l),
        Err(_) => routes_table.lookup(&users).await,
    };
    let live = match retried {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "route lookup failed; messages stay in the inbox");
            metrics::PUSH_FAILURES.inc();
            return;
        }
    };
    let plans = plan_pushes(&deliveries, &live);
    lanes.push(plans, Arc::new(live), since).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_common::api::ApiError;
    use im_common::route::MemoryRouteTable;
    use im_proto::client::Message;
    use im_proto::logic::{KickReply, KickRequest, PushReply};
    use std::sync::Mutex;
    use tokio::sync::Semaphore;

    /// A push call as (address, [(connection, seq)]).
    type Call = (String, Vec<(u64, u64)>);

    /// Gateways that record each push call; a call to a held address waits for a permit, and a call's
    /// connections in `gone` come back missing.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<Call>>,
        held: HashMap<String, Arc<Semaphore>>,
        gone: Vec<u64>,
    }

    #[async_trait::async_trait]
    impl GatewayApi for Recorder {
        async fn push(&self, addr: &str, batch: PushBatch) -> Result<PushReply, ApiError> {
            if let Some(gate) = self.held.get(addr) {
                gate.acquire().await.expect("open").forget();
            }
            let pushed: Vec<(u64, u64)> = batch
                .items
                .iter()
                .flat_map(|i| i.messages.iter().map(|m| (i.conn_ids[0], m.seq)))
                .collect();
            let missing = pushed
                .iter()
                .map(|(c, _)| *c)
                .filter(|c| self.gone.contains(c))
                .collect();
            self.calls.lock().unwrap().push((addr.to_string(), pushed));
            Ok(PushReply {
                missing_conn_ids: missing,
                ..Default::default()
            })
        }

        async fn kick(&self, _: &str, _: KickRequest) -> Result<KickReply, ApiError> {
            Ok(KickReply::default())
        }
    }

    impl Recorder {
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        async fn wait_for(&self, n: usize) -> Vec<Call> {
            for _ in 0..500 {
                if self.calls.lock().unwrap().len() >= n {
                    return self.calls();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            panic!("{n} calls expected, saw {:?}", self.calls());
        }
    }

    /// Users 1 and 3 on gateway `a` (connections 10 and 30), user 2 on `b` (20).
    async fn two_gateways() -> Arc<MemoryRouteTable> {
        let routes = Arc::new(MemoryRouteTable::default());
        for (gate, user, conn) in [("a", 1, 10), ("b", 2, 20), ("a", 3, 30)] {
            routes
                .register_gate(gate, &format!("addr-{gate}"), Duration::from_secs(60))
                .await
                .unwrap();
            let route = Route {
                device: 1,
                gate_id: gate.into(),
                conn_id: conn,
            };
            routes.set_route(user, &route).await.unwrap();
        }
        routes
    }

    fn on(calls: &[Call], addr: &str) -> Vec<Vec<(u64, u64)>> {
        calls
            .iter()
            .filter(|(a, _)| a == addr)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// [`two_gateways`], with gateway `a`'s calls waiting for permits.
    async fn gateway_a_held() -> (Arc<MemoryRouteTable>, Arc<Semaphore>, Arc<Recorder>) {
        let held = Arc::new(Semaphore::new(0));
        let gateways = Arc::new(Recorder {
            held: HashMap::from([("addr-a".to_string(), held.clone())]),
            ..Default::default()
        });
        (two_gateways().await, held, gateways)
    }

    #[tokio::test]
    async fn push_time_runs_from_the_pusher_to_the_gateways_answer() {
        let (routes, held, gateways) = gateway_a_held().await;
        let pusher = Pusher::start(routes, gateways.clone());
        // The histogram is the process's: only what this push adds counts.
        let sum = metrics::PUSH_TIME.get_sample_sum();
        pusher.dispatch(vec![(delivery(1, 9, 1), None)]).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(gateways.calls().is_empty(), "the gateway holds the push");
        held.add_permits(1);
        gateways.wait_for(1).await;
        // Observed once the lane has the answer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metrics::PUSH_TIME.get_sample_sum() - sum < 0.15 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "push time {} s",
                metrics::PUSH_TIME.get_sample_sum() - sum
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_gateway_that_does_not_answer_holds_back_no_other() {
        let (routes, held, gateways) = gateway_a_held().await;
        // Room for 256. A part weighs its messages, the users of its route
        // map and one: each part to a below weighs 4 (users 1 and 2).
        let lanes = Lanes::with_limits(routes.clone(), gateways.clone(), LANE_IDLE, 256);
        let pusher = Pusher::with_lanes(routes, lanes);
        // a's first call hangs; b gets its part, and after STALL the router
        // stops waiting for a.
        pusher
            .dispatch(vec![(delivery(1, 9, 1), None), (delivery(2, 9, 1), None)])
            .await;
        gateways.wait_for(1).await;
        pusher
            .dispatch(vec![(delivery(1, 9, 2), None), (delivery(2, 9, 2), None)])
            .await;
        pusher.dispatch(vec![(delivery(3, 9, 1), None)]).await;
        let calls = gateways.wait_for(2).await;
        assert_eq!(on(&calls, "addr-b"), vec![vec![(20, 1)], vec![(20, 2)]]);
        assert!(on(&calls, "addr-a").is_empty(), "{calls:?}");
        // Many more commits: b gets each at once; a's queue fills and the
        // parts beyond it are dropped (they stay in the inbox).
        for seq in 3..103 {
            pusher
                .dispatch(vec![
                    (delivery(1, 9, seq), None),
                    (delivery(2, 9, seq), None),
                ])
                .await;
            gateways.wait_for(seq as usize).await;
        }
        assert_eq!(on(&gateways.calls(), "addr-b").len(), 102);
        // Released, a gets its first part, then the parts its queue held
        // in one call, in commit order: the second and third commits, then
        // the next ones up to the queue's depth.
        held.add_permits(1_000);
        let calls = gateways.wait_for(104).await;
        let a = on(&calls, "addr-a");
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a[0], vec![(10, 1)]);
        let mut expected = vec![(10, 2), (30, 1)];
        // 4 (in flight) + 6 (the second and third commits, routed together
        // while the router waited: two messages, three users) + 4 a commit.
        expected.extend((3..64).map(|seq| (10, seq)));
        assert_eq!(a[1], expected);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(gateways.calls().len(), 104);
        // Caught up, a is waited for and pushed to again.
        pusher.dispatch(vec![(delivery(1, 9, 200), None)]).await;
        let calls = gateways.wait_for(105).await;
        assert_eq!(calls[104], ("addr-a".to_string(), vec![(10, 200)]));
    }

    #[tokio::test]
    async fn an_idle_lane_ends_and_the_next_part_starts_another() {
        let routes = two_gateways().await;
        let gateways = Arc::new(Recorder::default());
        let idle = Duration::from_millis(5);
        let lanes = Lanes::with_limits(routes.clone(), gateways.clone(), idle, LANE_MAX_QUEUED);
        let pusher = Pusher::with_lanes(routes, lanes);
        for seq in 1..=3 {
            pusher.dispatch(vec![(delivery(1, 9, seq), None)]).await;
            gateways.wait_for(seq as usize).await;
            // Longer than the lane's idle time: each part finds it ended.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let calls = gateways.calls();
        assert_eq!(
            on(&calls, "addr-a"),
            vec![vec![(10, 1)], vec![(10, 2)], vec![(10, 3)]]
        );
    }

    #[tokio::test]
    async fn routes_to_connections_a_gateway_no_longer_has_are_removed() {
        let routes = two_gateways().await;
        let gateways = Arc::new(Recorder {
            gone: vec![10],
            ..Default::default()
        });
        let pusher = Pusher::start(routes.clone(), gateways.clone());
        pusher
            .dispatch(vec![(delivery(1, 9, 1), None), (delivery(3, 9, 1), None)])
            .await;
        gateways.wait_for(1).await;
        for _ in 0..500 {
            if routes
                .lookup(&[1])
                .await
                .unwrap()
                .get(&1)
                .is_none_or(Vec::is_empty)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let live = routes.lookup(&[1, 3]).await.unwrap();
        assert!(live.get(&1).is_none_or(Vec::is_empty), "{live:?}");
        assert_eq!(live[&3].len(), 1);
    }

    fn delivery(user: i64, from: i64, seq: u64) -> Delivery {
        Delivery {
            user,
            item: 0,
            message: Message {
                seq,
                from,
                ..Default::default()
            },
        }
    }

    fn live(device: i32, gate: &str, conn: u64) -> LiveRoute {
        LiveRoute {
            route: Route {
                device,
                gate_id: gate.into(),
                conn_id: conn,
            },
            gate_addr: format!("addr-{gate}"),
        }
    }

    #[test]
    fn large_batches_split_into_calls_in_order() {
        let msg = |seq: u64, size: usize| Message {
            seq,
            body: vec![b'x'; size].into(),
            ..Default::default()
        };
        let item = |conn: u64, seqs: std::ops::Range<u64>, size: usize| PushItem {
            conn_ids: vec![conn],
            messages: seqs.map(|s| msg(s, size)).collect(),
        };
        // Three users: 10 x 300 B, 1 x 5,000 B (over the budget), 4 x 300 B.
        let batch = PushBatch {
            items: vec![
                item(1, 1..11, 300),
                item(2, 1..2, 5_000),
                item(3, 1..5, 300),
            ],
        };
        let calls = split_batch(batch.clone(), 1_000);
        for c in &calls {
            let bytes: usize = c
                .items
                .iter()
                .flat_map(|i| &i.messages)
                .map(im_proto::prost::Message::encoded_len)
                .sum();
            assert!(bytes <= 1_000 || c.items.iter().map(|i| i.messages.len()).sum::<usize>() == 1);
        }
        // Flattened, the calls hold the same (connection, seq) pairs in the same order.
        let flat = |calls: &[PushBatch]| -> Vec<(u64, u64)> {
            calls
                .iter()
                .flat_map(|c| &c.items)
                .flat_map(|i| i.messages.iter().map(|m| (i.conn_ids[0], m.seq)))
                .collect()
        };
        assert_eq!(flat(&calls), flat(std::slice::from_ref(&batch)));
        assert!(calls.len() >= 6, "{} calls", calls.len());
        // Small batches stay one call.
        let small = PushBatch {
            items: vec![item(1, 1..3, 10)],
        };
        assert_eq!(split_batch(small.clone(), 1_000), vec![small]);
        assert!(split_batch(PushBatch::default(), 1_000).is_empty());
    }

    #[test]
    fn groups_per_gateway_and_user_in_seq_order() {
        let routes = HashMap::from([
            (1, vec![live(1, "a", 10), live(2, "b", 20)]),
            (2, vec![live(1, "a", 30)]),
        ]);
        let origin = Some(Origin {
            gate_id: "a".into(),
            conn_id: 10,
        });
        let deliveries = vec![
            // user 1 sent to user 2: own copy skips conn 10
            (delivery(1, 1, 5), origin.clone()),
            (delivery(2, 1, 7), origin.clone()),
            (delivery(2, 1, 8), origin),
            (delivery(3, 1, 1), None), // offline
        ];
        let plans = plan_pushes(&deliveries, &routes);
        assert_eq!(plans.len(), 2);
        let a = &plans["addr-a"];
        assert_eq!(a.items.len(), 1);
        assert_eq!(a.items[0].conn_ids, vec![30]);
        assert_eq!(
            a.items[0]
                .messages
                .iter()
                .map(|m| m.seq)
                .collect::<Vec<_>>(),
            vec![7, 8]
        );
        let b = &plans["addr-b"];
        assert_eq!(b.items[0].conn_ids, vec![20]);
        assert_eq!(b.items[0].messages[0].seq, 5);
    }
}
