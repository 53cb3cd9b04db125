//! Group commit for read-diffusion (large group) messages: messages queue up
//! per shard (by group), many are stored in one transaction with consecutive
//! group sequences in arrival order, and are then pushed in that order: one
//! route lookup and one push per gateway for everything a batch holds.
//!
//! A group always lands on the same shard, and each shard pushes its batches
//! one after another, so members receive a group's messages in sequence
//! order (a member that sees a gap pulls, which costs far more than a push).
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use im_common::api::{ApiError, GatewayApi};
use im_common::route::RouteTable;
use im_proto::client::{ConversationType, Message};
use im_proto::logic::PushBatch;
use tokio::sync::{mpsc, oneshot};

use crate::committer::CommitterConfig;
use crate::metrics;
use crate::pusher::{Lanes, Origin};
use crate::social::c2g::plan_group_push;
use crate::store::{NewMessage, Store, Stored};

struct Job {
    msg: NewMessage,
    members: Vec<i64>,
    origin: Option<Origin>,
    reply: oneshot::Sender<Result<Stored, ApiError>>,
}

/// A stored group message on its way to the members online.
struct Outgoing {
    message: Message,
    members: Vec<i64>,
    origin: Option<Origin>,
}

#[derive(Clone)]
pub struct GroupCommitter {
    shards: Vec<mpsc::Sender<Job>>,
}

impl GroupCommitter {
    pub fn start(
        store: Store,
        routes: Arc<dyn RouteTable>,
        gateways: Arc<dyn GatewayApi>,
        cfg: CommitterConfig,
    ) -> GroupCommitter {
        let shards = (0..cfg.shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(cfg.queue.max(1));
                let (push_tx, push_rx) = mpsc::channel(256);
                tokio::spawn(run_shard(rx, store.clone(), push_tx, cfg.max_batch.max(1)));
                tokio::spawn(run_pushes(push_rx, routes.clone(), gateways.clone()));
                tx
            })
            .collect();
        GroupCommitter { shards }
    }

    /// Queues a message of group `msg.target` for `members`; the receiver
    /// yields once it is stored (or failed).
    pub async fn submit(
        &self,
        msg: NewMessage,
        members: Vec<i64>,
        origin: Option<Origin>,
    ) -> Result<oneshot::Receiver<Result<Stored, ApiError>>, ApiError> {
        let shard = &self.shards[msg.target.unsigned_abs() as usize % self.shards.len()];
        let (reply, rx) = oneshot::channel();
        shard
            .send(Job {
                msg,
                members,
                origin,
                reply,
            })
            .await
            .map_err(|_| ApiError::unavailable("store is shutting down"))?;
        Ok(rx)
    }
}

async fn run_shard(
    mut rx: mpsc::Receiver<Job>,
    store: Store,
    pushes: mpsc::Sender<(Instant, Vec<Outgoing>)>,
    max_batch: usize,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let items: Vec<NewMessage> = jobs.iter().map(|j| j.msg.clone()).collect();
        let started = Instant::now();
        let now = im_proto::now_ms();
        let stored = match store.commit_group_batch(&items, now).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, batch = items.len(), "failed to store group messages");
                for j in jobs.drain(..) {
                    let _ = j
                        .reply
                        .send(Err(ApiError::unavailable("storage unavailable; retry")));
                }
                continue;
            }
        };
        metrics::STORE_LATENCY.observe(started.elapsed().as_secs_f64());
        metrics::STORE_BATCH.observe(items.len() as f64);
        let mut outgoing = Vec::new();
        for (job, stored) in jobs.drain(..).zip(stored) {
            let Some(s) = stored else {
                let _ = job.reply.send(Err(crate::store::messages::being_stored()));
                continue;
            };
            let _ = job.reply.send(Ok(Stored {
                msg_id: s.msg_id,
                sender_seq: s.group_seq,
                sent_at_ms: s.sent_at_ms,
                duplicate: s.duplicate,
            }));
            if s.duplicate {
                continue;
            }
            metrics::MESSAGES.with_label_values(&["c2g"]).inc();
            metrics::FANOUT.observe(job.members.len() as f64);
            let m = job.msg;
            outgoing.push(Outgoing {
                message: Message {
                    msg_id: s.msg_id,
                    seq: 0,
                    conv_type: ConversationType::C2g as i32,
                    from: m.sender,
                    to: m.target,
                    client_msg_id: m.client_msg_id,
                    content_type: m.content_type,
                    body: m.body,
                    sent_at_ms: s.sent_at_ms,
                    group_seq: s.group_seq,
                },
                members: job.members,
                origin: job.origin,
            });
        }
        if !outgoing.is_empty() && pushes.send((Instant::now(), outgoing)).await.is_err() {
            tracing::warn!("group pusher stopped; members pull the messages");
        }
    }
}

/// Pushes stored batches in order, merging whatever is queued: one route
/// lookup for all members concerned, one call per gateway (in its lane,
/// as the one-to-one pusher's: a gateway that stops answering holds back
/// no other).
async fn run_pushes(
    mut rx: mpsc::Receiver<(Instant, Vec<Outgoing>)>,
    routes: Arc<dyn RouteTable>,
    gateways: Arc<dyn GatewayApi>,
) {
    let mut lanes = Lanes::new(routes.clone(), gateways);
    let mut queued: Vec<(Instant, Vec<Outgoing>)> = Vec::new();
    while rx.recv_many(&mut queued, 64).await > 0 {
        let since = queued[0].0;
        let outgoing: Vec<Outgoing> = queued.drain(..).flat_map(|(_, o)| o).collect();
        let members: Vec<i64> = outgoing
            .iter()
            .flat_map(|o| o.members.iter().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let live = match routes.lookup(&members).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "route lookup failed; group members pull the messages");
                metrics::PUSH_FAILURES.inc();
                continue;
            }
        };
        let plans = plan_batched_group_push(&live, &outgoing);
        lanes.push(plans, Arc::new(live), since).await;
    }
}

/// Per gateway, items in message order, each listing the connections there
/// of the message's members; consecutive messages for the same connections
/// share an item (one PUSH frame).
fn plan_batched_group_push(
    live: &HashMap<i64, Vec<im_common::route::LiveRoute>>,
    outgoing: &[Outgoing],
) -> HashMap<String, PushBatch> {
    let mut batches: HashMap<String, PushBatch> = HashMap::new();
    let same_members = outgoing.windows(2).all(|w| w[0].members == w[1].members);
    for o in outgoing {
        let scoped: HashMap<i64, Vec<im_common::route::LiveRoute>>;
        let routes = if same_members {
            live
        } else {
            scoped = o
                .members
                .iter()
                .filter_map(|m| live.get(m).map(|r| (*m, r.clone())))
                .collect();
            &scoped
        };
        for (addr, batch) in plan_group_push(routes, &o.message, o.origin.as_ref()) {
            let items = &mut batches.entry(addr).or_default().items;
            for item in batch.items {
                // The same connections as the previous message: one frame for both.
                match items.last_mut() {
                    Some(last) if last.conn_ids == item.conn_ids => {
                        last.messages.extend(item.messages)
                    }
                    _ => items.push(item),
                }
            }
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::social::c2g::tests::live;

    fn out(group_seq: u64, members: Vec<i64>, origin: Option<(&str, u64)>) -> Outgoing {
        Outgoing {
            message: Message {
                group_seq,
                ..Default::default()
            },
            members,
            origin: origin.map(|(g, c)| Origin {
                gate_id: g.into(),
                conn_id: c,
            }),
        }
    }

    #[test]
    fn one_push_per_gateway_with_messages_in_order_and_members_scoped() {
        let seqs = |b: &PushBatch| -> Vec<(Vec<u64>, Vec<u64>)> {
            b.items
                .iter()
                .map(|i| {
                    let seqs = i.messages.iter().map(|m| m.group_seq).collect();
                    (seqs, i.conn_ids.clone())
                })
                .collect()
        };
        let routes = HashMap::from([
            (1, vec![live("a", 10)]),
            (2, vec![live("a", 20), live("b", 30)]),
            (3, vec![live("b", 40)]),
        ]);
        // Member 3 joined only for the third message; 1 sent the second.
        let batch = vec![
            out(1, vec![1, 2], None),
            out(2, vec![1, 2], Some(("a", 10))),
            out(3, vec![1, 2, 3], None),
        ];
        let plans = plan_batched_group_push(&routes, &batch);
        assert_eq!(plans.len(), 2);
        assert_eq!(
            seqs(&plans["addr-a"]),
            vec![
                (vec![1], vec![10, 20]),
                (vec![2], vec![20]),
                (vec![3], vec![10, 20])
            ]
        );
        assert_eq!(
            seqs(&plans["addr-b"]),
            vec![(vec![1, 2], vec![30]), (vec![3], vec![30, 40])]
        );
    }
}
