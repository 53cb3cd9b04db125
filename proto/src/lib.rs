//! The wire protocol shared by clients, gateways and the logic tier.
//!
//! - [`frame`]: the fixed 16-byte header, [`Frame`], the command codes and the
//!   tokio-util codec that enforces the maximum body size before reading a body.
//! - [`client`]: protobuf bodies of client frames (`proto/client.proto`).
//! - [`logic`]: gRPC services and messages between gateways and logic
//!   (`proto/logic.proto`).
//!
//! Data flows: bytes → [`FrameCodec`] → [`Frame`] → `prost::Message::decode` of
//! the body named by the command, and back the same way.
#![forbid(unsafe_code)]

pub mod frame;

/// Generated code, nested like the protobuf packages so cross-package paths resolve.
#[allow(clippy::all, missing_docs)]
mod pb {
    pub mod im {
        pub mod client {
            pub mod v1 {
                tonic::include_proto!("im.client.v1");
            }
        }
        pub mod logic {
            pub mod v1 {
                tonic::include_proto!("im.logic.v1");
            }
        }
    }
}

/// Client <-> gateway frame bodies.
pub use pb::im::client::v1 as client;
/// Gateway <-> logic gRPC.
pub use pb::im::logic::v1 as logic;

pub use frame::{Command, Flags, Frame, FrameCodec, FrameError, HEADER_LEN, MAGIC, VERSION};
pub use prost;

/// Current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Content types from here up are the server's (receipts, revoke notices);
/// clients may not send them.
pub const SYSTEM_CONTENT_MIN: u32 = 0xF000;

/// Whether `reader` acknowledging `m` stores a DELIVERED receipt for its
/// sender: one-to-one user content from someone else (docs/protocol.md,
/// section 5.5). Receipts never produce receipts.
pub fn wants_delivered_receipt(m: &client::Message, reader: i64) -> bool {
    delivered_receipt_to(m.conv_type, m.from, m.content_type, reader).is_some()
}

/// [`wants_delivered_receipt`] by a message's parts: the sender, whom
/// `reader` acknowledging it sends a DELIVERED receipt to, if anyone.
pub fn delivered_receipt_to(
    conv_type: i32,
    from: i64,
    content_type: u32,
    reader: i64,
) -> Option<i64> {
    (conv_type == client::ConversationType::C2c as i32
        && from != reader
        && content_type < SYSTEM_CONTENT_MIN)
        .then_some(from)
}
