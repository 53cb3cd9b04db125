//! The frame header, command codes and the length-checked codec; no IO here.
//!
//! Header, 16 bytes, all integers big-endian:
//!
//! | offset | size | field    |
//! |--------|------|----------|
//! | 0      | 2    | magic `0x494D` ("IM") |
//! | 2      | 1    | version (1) |
//! | 3      | 1    | flags (bit 0 response, bit 1 error) |
//! | 4      | 2    | command |
//! | 6      | 2    | reserved, 0 |
//! | 8      | 4    | sequence (client's request number, echoed in the response) |
//! | 12     | 4    | body length |
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

pub const MAGIC: u16 = 0x494D;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
/// Default largest body accepted (64 KiB).
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// Command codes. Unknown codes decode fine (the gateway answers them with
/// `UNKNOWN_COMMAND`), so a frame carries the raw `u16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    Auth = 0x0001,
    Logout = 0x0002,
    Kickout = 0x0003,
    Heartbeat = 0x0004,
    C2cSend = 0x0005,
    C2gSend = 0x0006,
    Ack = 0x0007,
    Pull = 0x0008,
    Push = 0x0009,
    Ctrl = 0x000A,
    C2sSend = 0x000B,
    GroupPull = 0x000C,
}

impl Command {
    pub const ALL: [Command; 12] = [
        Command::Auth,
        Command::Logout,
        Command::Kickout,
        Command::Heartbeat,
        Command::C2cSend,
        Command::C2gSend,
        Command::Ack,
        Command::Pull,
        Command::Push,
        Command::Ctrl,
        Command::C2sSend,
        Command::GroupPull,
    ];

    pub fn from_code(code: u16) -> Option<Command> {
        Self::ALL.into_iter().find(|c| *c as u16 == code)
    }

    /// Lower-case name, used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Command::Auth => "auth",
            Command::Logout => "logout",
            Command::Kickout => "kickout",
            Command::Heartbeat => "heartbeat",
            Command::C2cSend => "c2c_send",
            Command::C2gSend => "c2g_send",
            Command::Ack => "ack",
            Command::Pull => "pull",
            Command::Push => "push",
            Command::Ctrl => "ctrl",
            Command::C2sSend => "c2s_send",
            Command::GroupPull => "group_pull",
        }
    }
}

/// Header flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    pub const RESPONSE: u8 = 0b01;
    pub const ERROR: u8 = 0b10;
    pub fn is_response(self) -> bool {
        self.0 & Self::RESPONSE != 0
    }
    pub fn is_error(self) -> bool {
        self.0 & Self::ERROR != 0
    }
}

/// One frame: header fields plus the undecoded protobuf body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: u16,
    pub flags: Flags,
    pub seq: u32,
    pub body: Bytes,
}

impl Frame {
    pub fn request(command: Command, seq: u32, body: impl Into<Bytes>) -> Frame {
        Frame {
            command: command as u16,
            flags: Flags(0),
            seq,
            body: body.into(),
        }
    }

    pub fn response(command: u16, seq: u32, body: impl Into<Bytes>) -> Frame {
        Frame {
            command,
            flags: Flags(Flags::RESPONSE),
            seq,
            body: body.into(),
        }
    }

    /// A response with the error flag; `body` is an encoded `client::Error`.
    pub fn error(command: u16, seq: u32, body: impl Into<Bytes>) -> Frame {
        Frame {
            command,
            flags: Flags(Flags::RESPONSE | Flags::ERROR),
            seq,
            body: body.into(),
        }
    }

    pub fn command(&self) -> Option<Command> {
        Command::from_code(self.command)
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Appends header and body to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        dst.put_u16(MAGIC);
        dst.put_u8(VERSION);
        dst.put_u8(self.flags.0);
        dst.put_u16(self.command);
        dst.put_u16(0);
        dst.put_u32(self.seq);
        dst.put_u32(self.body.len() as u32);
        dst.put_slice(&self.body);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut b);
        b.freeze()
    }

    /// Decodes exactly one frame from a complete buffer (one WebSocket message).
    pub fn decode_exact(buf: &[u8], max_body: usize) -> Result<Frame, FrameError> {
        let header = Header::parse(buf, max_body)?.ok_or(FrameError::Truncated)?;
        let total = HEADER_LEN + header.len;
        if buf.len() != total {
            return Err(if buf.len() < total {
                FrameError::Truncated
            } else {
                FrameError::TrailingBytes
            });
        }
        Ok(header.into_frame(Bytes::copy_from_slice(&buf[HEADER_LEN..])))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("body of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame is truncated")]
    Truncated,
    #[error("bytes after the end of the frame")]
    TrailingBytes,
    #[error("io error: {0}")]
    Io(String),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e.to_string())
    }
}

struct Header {
    flags: u8,
    command: u16,
    seq: u32,
    len: usize,
}

impl Header {
    /// `Ok(None)` while fewer than [`HEADER_LEN`] bytes are present.
    fn parse(mut buf: &[u8], max_body: usize) -> Result<Option<Header>, FrameError> {
        if buf.len() < HEADER_LEN {
            // Reject a wrong magic as soon as we have it, so garbage fails fast.
            if buf.len() >= 2 {
                let magic = u16::from_be_bytes([buf[0], buf[1]]);
                if magic != MAGIC {
                    return Err(FrameError::BadMagic(magic));
                }
            }
            return Ok(None);
        }
        let magic = buf.get_u16();
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = buf.get_u8();
        if version != VERSION {
            return Err(FrameError::BadVersion(version));
        }
        let flags = buf.get_u8();
        let command = buf.get_u16();
        let _reserved = buf.get_u16();
        let seq = buf.get_u32();
        let len = buf.get_u32() as usize;
        if len > max_body {
            return Err(FrameError::TooLarge { len, max: max_body });
        }
        Ok(Some(Header {
            flags,
            command,
            seq,
            len,
        }))
    }

    fn into_frame(self, body: Bytes) -> Frame {
        Frame {
            command: self.command,
            flags: Flags(self.flags),
            seq: self.seq,
            body,
        }
    }
}

/// Length-delimited codec for [`Frame`]s over a byte stream.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_body: usize,
}

impl FrameCodec {
    pub fn new(max_body: usize) -> Self {
        FrameCodec { max_body }
    }
    pub fn max_body(&self) -> usize {
        self.max_body
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_BODY)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = Header::parse(src, self.max_body)? else {
            return Ok(None);
        };
        let total = HEADER_LEN + header.len;
        if src.len() < total {
            // The length was checked against the limit above, so this is bounded.
            src.reserve(total - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(total);
        frame.advance(HEADER_LEN);
        Ok(Some(header.into_frame(frame.freeze())))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        if item.body.len() > self.max_body {
            return Err(FrameError::TooLarge {
                len: item.body.len(),
                max: self.max_body,
            });
        }
        item.encode_into(dst);
        Ok(())
    }
}

/// Pre-encoded frames (a push body encoded once for many connections).
impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 4096;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            any::<u16>(),
            0u8..4,
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..MAX),
        )
            .prop_map(|(command, flags, seq, body)| Frame {
                command,
                flags: Flags(flags),
                seq,
                body: Bytes::from(body),
            })
    }

    #[test]
    fn header_layout_is_as_documented() {
        let f = Frame::request(Command::C2cSend, 0x0102_0304, vec![0xAA, 0xBB]);
        let b = f.to_bytes();
        assert_eq!(
            &b[..],
            &[
                0x49, 0x4D, 1, 0, 0x00, 0x05, 0, 0, 1, 2, 3, 4, 0, 0, 0, 2, 0xAA, 0xBB
            ]
        );
    }

    #[test]
    fn oversize_length_is_rejected_before_the_body_arrives() {
        let mut b = BytesMut::new();
        b.put_u16(MAGIC);
        b.put_u8(VERSION);
        b.put_u8(0);
        b.put_u16(5);
        b.put_u16(0);
        b.put_u32(1);
        b.put_u32(u32::MAX);
        let err = FrameCodec::new(MAX).decode(&mut b).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: u32::MAX as usize,
                max: MAX
            }
        );
    }

    #[test]
    fn bad_magic_fails_after_two_bytes() {
        let mut b = BytesMut::from(&b"GE"[..]);
        assert!(matches!(
            FrameCodec::new(MAX).decode(&mut b),
            Err(FrameError::BadMagic(_))
        ));
    }

    #[test]
    fn unknown_command_decodes_with_raw_code() {
        let f = Frame::request(Command::Ack, 1, Bytes::new());
        let mut raw = BytesMut::from(&f.to_bytes()[..]);
        raw[4] = 0x7F;
        let got = FrameCodec::new(MAX).decode(&mut raw).unwrap().unwrap();
        assert_eq!(got.command, 0x7F07);
        assert_eq!(got.command(), None);
    }

    proptest! {
        #[test]
        fn round_trip_stream(frames in proptest::collection::vec(arb_frame(), 1..8), split in 1usize..64) {
            let mut codec = FrameCodec::new(MAX);
            let mut wire = BytesMut::new();
            for f in &frames {
                codec.encode(f.clone(), &mut wire).unwrap();
            }
            // Feed the stream in chunks of `split` bytes.
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(split) {
                buf.extend_from_slice(chunk);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    out.push(f);
                }
            }
            prop_assert_eq!(out, frames);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn round_trip_exact(f in arb_frame()) {
            prop_assert_eq!(Frame::decode_exact(&f.to_bytes(), MAX).unwrap(), f);
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_overallocate(data in proptest::collection::vec(any::<u8>(), 0..10_000)) {
            let mut codec = FrameCodec::new(MAX);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(f)) = codec.decode(&mut buf) {
                prop_assert!(f.body.len() <= MAX);
            }
            prop_assert!(buf.capacity() <= data.len().max(HEADER_LEN + MAX));
            let _ = Frame::decode_exact(&data, MAX);
        }

        #[test]
        fn valid_header_with_garbage_body_never_panics(cmd in any::<u16>(), len in 0u32..(MAX as u32 * 2), body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut b = BytesMut::new();
            b.put_u16(MAGIC); b.put_u8(VERSION); b.put_u8(0); b.put_u16(cmd); b.put_u16(0); b.put_u32(7); b.put_u32(len);
            b.extend_from_slice(&body);
            let res = FrameCodec::new(MAX).decode(&mut b);
            if len as usize > MAX {
                let too_large = matches!(res, Err(FrameError::TooLarge { .. }));
                prop_assert!(too_large);
            }
            prop_assert!(b.capacity() <= (HEADER_LEN + MAX).max(HEADER_LEN + body.len()) );
        }
    }
}
