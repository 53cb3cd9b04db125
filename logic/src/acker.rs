//! Batches device acknowledgements into one transaction each, then pushes the
//! receipts they produced. Acks are cumulative: one lost here is covered by
//! the device's next one.
use tokio::sync::mpsc;

use crate::metrics;
use crate::pusher::Pusher;
use crate::store::Store;
use crate::store::receipts::DeviceAck;

#[derive(Clone)]
pub struct Acker {
    tx: mpsc::Sender<DeviceAck>,
}

const MAX_BATCH: usize = 1024;

impl Acker {
    pub fn start(store: Store, pusher: Pusher) -> Acker {
        let (tx, mut rx) = mpsc::channel::<DeviceAck>(16 * 1024);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let acks = newest_per_device(&mut batch);
                match store.commit_acks(&acks, im_proto::now_ms()).await {
                    Ok(deliveries) => {
                        let receipts = deliveries
                            .iter()
                            .filter(|d| d.user != d.message.from)
                            .count();
                        metrics::MESSAGES
                            .with_label_values(&["receipt"])
                            .inc_by(receipts as u64);
                        pusher
                            .dispatch(deliveries.into_iter().map(|d| (d, None)).collect())
                            .await;
                    }
                    Err(e) => tracing::warn!(error = %e, "failed to record acknowledgements"),
                }
            }
        });
        Acker { tx }
    }

    /// Queues an acknowledgement; when the queue is full it is dropped (the
    /// device's next cumulative ack covers it).
    pub fn ack(&self, ack: DeviceAck) {
        let _ = self.tx.try_send(ack);
    }
}

/// Keeps the highest ack per (user, device), in first-seen order.
fn newest_per_device(batch: &mut Vec<DeviceAck>) -> Vec<DeviceAck> {
    let mut out: Vec<DeviceAck> = Vec::with_capacity(batch.len());
    let mut index = std::collections::HashMap::new();
    for a in batch.drain(..) {
        match index.get(&(a.user, a.device)) {
            Some(&i) => {
                let slot: &mut DeviceAck = &mut out[i];
                slot.seq = slot.seq.max(a.seq);
            }
            None => {
                index.insert((a.user, a.device), out.len());
                out.push(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_ack_per_device() {
        let a = |user, device, seq| DeviceAck { user, device, seq };
        let mut batch = vec![a(1, 1, 5), a(1, 2, 3), a(1, 1, 9), a(1, 1, 7), a(2, 1, 1)];
        assert_eq!(
            newest_per_device(&mut batch),
            vec![a(1, 1, 9), a(1, 2, 3), a(2, 1, 1)]
        );
        assert!(batch.is_empty());
    }
}
