//! Batches device acknowledgements into one transaction each, then pushes the
//! receipts they produced. Acks are cumulative: one lost here is covered by
//! the device's next one.
use tokio::sync::mpsc;

use crate::metrics;
use crate::pusher::Pusher;
use crate::store::receipts::DeviceAck;
use crate::store::{Store, WriterConn};

#[derive(Clone)]
pub struct Acker {
    tx: mpsc::Sender<DeviceAck>,
}

const MAX_BATCH: usize = 1024;

/// How long a small batch waits for more acks. Receipts are not on the
/// message path, and each ack transaction costs the store about as much as a
/// message batch: gathering acks for a few milliseconds keeps their
/// transactions few when thousands of devices ack one message each.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

impl Acker {
    pub fn start(store: Store, pusher: Pusher) -> Acker {
        let (tx, mut rx) = mpsc::channel::<DeviceAck>(16 * 1024);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut conn = WriterConn::default();
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                if batch.len() < MAX_BATCH {
                    tokio::time::sleep(LINGER).await;
                    while batch.len() < MAX_BATCH
                        && let Ok(a) = rx.try_recv()
                    {
                        batch.push(a);
                    }
                }
                let result = store
                    .commit_acks_on(&mut conn, &batch, im_proto::now_ms())
                    .await;
                batch.clear();
                match result {
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
