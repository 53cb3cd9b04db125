//! The frame codec on typical frames: a C2C_SEND request (header + protobuf
//! body, encode and decode) and PUSH frames of 1 and 32 messages, as the
//! gateway writes them and a client reads them.
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use im_proto::client::{C2cSendRequest, ConversationType, Message, Push};
use im_proto::prost::Message as _;
use im_proto::{Command, Frame, FrameCodec};
use std::hint::black_box;
use tokio_util::codec::{Decoder, Encoder};

fn send_request() -> C2cSendRequest {
    C2cSendRequest {
        to: 123_456,
        client_msg_id: "0000018c2f1e9a7b9f3c2d1e".into(),
        content_type: 1,
        body: Bytes::from(vec![b'x'; 64]),
    }
}

fn push(n: usize) -> Push {
    Push {
        messages: (0..n)
            .map(|i| Message {
                msg_id: 9_000_000 + i as i64,
                seq: 1_000 + i as u64,
                conv_type: ConversationType::C2c as i32,
                from: 42,
                to: 123_456,
                client_msg_id: format!("0000018c2f1e9a7b9f3c{i:04}"),
                content_type: 1,
                body: Bytes::from(vec![b'x'; 64]),
                sent_at_ms: 1_700_000_000_000,
                group_seq: 0,
            })
            .collect(),
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));

    let req = send_request();
    g.bench_function("c2c_send/encode", |b| {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            let frame = Frame::request(Command::C2cSend, 7, black_box(&req).encode_to_vec());
            codec.encode(frame, &mut buf).expect("encode");
            black_box(buf.len())
        })
    });
    let wire = Frame::request(Command::C2cSend, 7, req.encode_to_vec()).to_bytes();
    g.bench_function("c2c_send/decode", |b| {
        let mut codec = FrameCodec::default();
        b.iter(|| {
            let mut src = BytesMut::from(black_box(&wire[..]));
            let frame = codec
                .decode(&mut src)
                .expect("decode")
                .expect("a whole frame");
            black_box(C2cSendRequest::decode(frame.body).expect("body"))
        })
    });

    for n in [1usize, 32] {
        let p = push(n);
        g.bench_function(format!("push_{n}/encode"), |b| {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::with_capacity(64 * 1024);
            b.iter(|| {
                buf.clear();
                let frame = Frame::request(Command::Push, 0, black_box(&p).encode_to_vec());
                codec.encode(frame, &mut buf).expect("encode");
                black_box(buf.len())
            })
        });
        let wire = Frame::request(Command::Push, 0, p.encode_to_vec()).to_bytes();
        g.bench_function(format!("push_{n}/decode"), |b| {
            let mut codec = FrameCodec::default();
            b.iter(|| {
                let mut src = BytesMut::from(black_box(&wire[..]));
                let frame = codec
                    .decode(&mut src)
                    .expect("decode")
                    .expect("a whole frame");
                black_box(Push::decode(frame.body).expect("body").messages.len())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = codec
}
criterion_main!(benches);
