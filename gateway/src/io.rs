//! Frame I/O over a byte stream that holds no buffer while the connection is
//! idle. `FramedRead`/`FramedWrite` keep 8 KiB each per connection for its
//! whole life; with 100,000 mostly idle connections that is most of the
//! gateway's memory. Here the read buffer exists only while bytes are
//! pending, and the writer queues the already encoded frames (no copy) and
//! hands them to one vectored write. One value reads and writes (no split
//! halves sharing the socket through another allocation).
use std::collections::VecDeque;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures::{Sink, Stream};
use im_proto::{Frame, FrameCodec, FrameError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::Decoder;

/// Most bytes taken from the socket by one read call.
const READ_CHUNK: usize = 4096;
/// Frames handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Decoded frames from `T` (a [`Stream`]) and encoded frames into it (a
/// [`Sink`]).
pub struct FrameIo<T> {
    inner: T,
    codec: FrameCodec,
    /// Bytes read and not yet decoded; no capacity while none are pending.
    buf: BytesMut,
    eof: bool,
    /// Frames accepted and not yet written.
    queue: VecDeque<Bytes>,
}

impl<T> FrameIo<T> {
    pub fn new(inner: T, codec: FrameCodec) -> Self {
        FrameIo {
            inner,
            codec,
            buf: BytesMut::new(),
            eof: false,
            queue: VecDeque::new(),
        }
    }
}

impl<T: AsyncRead + Unpin> Stream for FrameIo<T> {
    type Item = Result<Frame, FrameError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.codec.decode(&mut this.buf)? {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.eof {
                return Poll::Ready(if this.buf.is_empty() {
                    None
                } else {
                    Some(Err(FrameError::Io("connection closed mid-frame".into())))
                });
            }
            // Read on the stack and keep only the bytes read: a 4 KiB heap
            // buffer per read was a large allocation (past glibc's
            // per-thread cache) for each frame of a few dozen bytes.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => this.buf.extend_from_slice(read.filled()),
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Some(Err(FrameError::Io(e.to_string()))));
                }
                Poll::Pending => {
                    if this.buf.is_empty() {
                        // Nothing half-read: give the memory back while idle.
                        this.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> FrameIo<T> {
    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.queue.is_empty() {
            let n = {
                let slices: Vec<IoSlice<'_>> = self
                    .queue
                    .iter()
                    .take(MAX_IOVECS)
                    .map(|b| IoSlice::new(b))
                    .collect();
                ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices))?
            };
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            let mut left = n;
            while left > 0 {
                let front = self.queue.front_mut().expect("wrote more than was queued");
                if front.len() <= left {
                    left -= front.len();
                    self.queue.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        self.queue = VecDeque::new();
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> Sink<Bytes> for FrameIo<T> {
    type Error = String;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let this = self.get_mut();
        if this.queue.len() >= MAX_IOVECS {
            ready!(this.poll_write_queue(cx)).map_err(|e| e.to_string())?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Bytes) -> Result<(), String> {
        if !item.is_empty() {
            self.get_mut().queue.push_back(item);
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let this = self.get_mut();
        ready!(this.poll_write_queue(cx)).map_err(|e| e.to_string())?;
        Pin::new(&mut this.inner)
            .poll_flush(cx)
            .map_err(|e| e.to_string())
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner)
            .poll_shutdown(cx)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use im_proto::Command;

    fn frame(seq: u32, body: &[u8]) -> Bytes {
        Frame::request(Command::C2cSend, seq, body.to_vec()).to_bytes()
    }

    #[tokio::test]
    async fn frames_round_trip_in_order_through_small_pipes() {
        // A 7-byte pipe splits frames and vectored writes at odd places.
        let (a, b) = tokio::io::duplex(7);
        let mut writer = FrameIo::new(a, FrameCodec::new(1 << 20));
        let mut reader = FrameIo::new(b, FrameCodec::new(1 << 20));
        let bodies: Vec<Vec<u8>> = (0..200u32)
            .map(|i| vec![i as u8; (i as usize * 37) % 5000])
            .collect();
        let expected = bodies.clone();
        let send = tokio::spawn(async move {
            for (i, body) in bodies.iter().enumerate() {
                writer.feed(frame(i as u32, body)).await.unwrap();
                if i % 13 == 0 {
                    writer.flush().await.unwrap();
                }
            }
            writer.close().await.unwrap();
        });
        for (i, body) in expected.iter().enumerate() {
            let f = reader.next().await.unwrap().unwrap();
            assert_eq!((f.seq, f.body.as_ref()), (i as u32, body.as_slice()));
        }
        assert!(reader.next().await.is_none());
        send.await.unwrap();
    }

    #[tokio::test]
    async fn a_reader_holds_only_the_bytes_it_read_and_a_cut_frame_is_an_error() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut reader = FrameIo::new(b, FrameCodec::new(1024));
        tokio::io::AsyncWriteExt::write_all(&mut a, &frame(1, b"hi"))
            .await
            .unwrap();
        assert_eq!(reader.next().await.unwrap().unwrap().seq, 1);
        let idle = futures::poll!(reader.next());
        assert!(idle.is_pending());
        assert_eq!(reader.buf.capacity(), 0);
        let half = frame(2, b"hello");
        tokio::io::AsyncWriteExt::write_all(&mut a, &half[..10])
            .await
            .unwrap();
        assert!(futures::poll!(reader.next()).is_pending());
        // What was read is kept, and no more room than it needs.
        assert_eq!(reader.buf.len(), 10);
        assert!(
            reader.buf.capacity() < READ_CHUNK / 4,
            "{}",
            reader.buf.capacity()
        );
        drop(a);
        assert!(matches!(reader.next().await, Some(Err(FrameError::Io(_)))));
    }
}
