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
    let calls = plans.into_iter().map(|(addr, batch)| async move {
        match gateways.push(&addr, batch).await {
            Ok(reply) => (addr, reply.missing_conn_ids),
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
