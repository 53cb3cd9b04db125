//! Turns committed inbox entries into per-gateway push batches; it never
//! touches storage, and a failed push loses nothing (the inbox is the truth).
use std::collections::HashMap;
use std::sync::Arc;

use im_common::api::GatewayApi;
use im_common::route::{LiveRoute, RouteTable};
use im_proto::logic::{PushBatch, PushItem};
use tokio::sync::mpsc;

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

/// Delivers batches in the order they were committed, merging those that
/// wait behind a push in flight.
#[derive(Clone)]
pub struct Pusher {
    tx: mpsc::Sender<Vec<Outgoing>>,
}

impl Pusher {
    pub fn start(routes: Arc<dyn RouteTable>, gateways: Arc<dyn GatewayApi>) -> Pusher {
        let (tx, mut rx) = mpsc::channel::<Vec<Outgoing>>(256);
        tokio::spawn(async move {
            // Whatever queued up while the previous push was out goes out
            // together (in commit order): one route lookup and one call per
            // gateway however many batches committed meanwhile.
            let mut queued: Vec<Vec<Outgoing>> = Vec::new();
            while rx.recv_many(&mut queued, 64).await > 0 {
                let batch: Vec<Outgoing> = queued.drain(..).flatten().collect();
                push_once(routes.as_ref(), gateways.as_ref(), batch).await;
            }
        });
        Pusher { tx }
    }

    pub async fn dispatch(&self, deliveries: Vec<Outgoing>) {
        if deliveries.is_empty() {
            return;
        }
        if self.tx.send(deliveries).await.is_err() {
            tracing::warn!("pusher stopped; messages stay in the inbox");
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

async fn push_once(
    routes_table: &dyn RouteTable,
    gateways: &dyn GatewayApi,
    deliveries: Vec<Outgoing>,
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
    // One gateway's calls one after the other (they carry its users'
    // messages in order); the gateways side by side.
    let calls = plans.into_iter().map(|(addr, batch)| async move {
        match push_in_calls(gateways, &addr, batch).await {
            Ok(missing) => (addr, missing),
            Err(e) => {
                tracing::warn!(gateway = %addr, error = %e, "push failed; messages stay in the inbox");
                metrics::PUSH_FAILURES.inc();
                (addr, Vec::new())
            }
        }
    });
    // Routes to connections their gateway no longer has (it restarted) are stale.
    for (addr, missing) in futures::future::join_all(calls).await {
        for (user, routes) in &live {
            for r in routes {
                if r.gate_addr == addr
                    && missing.contains(&r.route.conn_id)
                    && let Err(e) = routes_table.remove_route(*user, &r.route).await
                {
                    tracing::debug!(error = %e, "failed to remove stale route");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_common::route::Route;
    use im_proto::client::Message;

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
