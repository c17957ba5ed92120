//! These tests drive the futures with a small executor of their own: `tokio::io::duplex` needs no
//! runtime, and a tokio dev-dependency would put tokio in `cargo tree -p virtgate-rpc` even
//! without the feature.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::packet::{call, pong, Header, Program, MAX_LEN};

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn waker() -> Waker {
    Waker::from(Arc::new(Unpark(std::thread::current())))
}

fn block_on<F: Future>(f: F) -> F::Output {
    let waker = waker();
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Runs two futures to completion, interleaved.
fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    block_on(async {
        let (mut a, mut b) = (pin!(a), pin!(b));
        let (mut ra, mut rb) = (None, None);
        std::future::poll_fn(|cx| {
            if ra.is_none() {
                if let Poll::Ready(v) = a.as_mut().poll(cx) {
                    ra = Some(v);
                }
            }
            if rb.is_none() {
                if let Poll::Ready(v) = b.as_mut().poll(cx) {
                    rb = Some(v);
                }
            }
            if ra.is_some() && rb.is_some() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        (ra.unwrap(), rb.unwrap())
    })
}

#[test]
fn reads_packets_one_at_a_time_and_none_at_a_clean_end() {
    let (mut peer, ours) = duplex(1 << 16);
    let first = call(Program::Remote, 66, 0, &[]);
    let second = call(Program::Remote, 60, 1, &[0, 0, 0, 10]);
    block_on(async {
        peer.write_all(&first).await.unwrap();
        peer.write_all(&second).await.unwrap();
        drop(peer);
        let mut s = PacketStream::new(ours);
        assert_eq!(s.read_packet(MAX_LEN).await.unwrap(), Some(&first[..]));
        assert_eq!(s.read_packet(MAX_LEN).await.unwrap(), Some(&second[..]));
        assert!(s.read_packet(MAX_LEN).await.unwrap().is_none());
    });
}

#[test]
fn a_large_packet_arrives_in_pieces_through_a_small_pipe() {
    let (mut peer, ours) = duplex(4096);
    let payload: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let big = call(Program::Remote, 211, 8, &payload);
    let mut s = PacketStream::new(ours);
    let (read, ()) = join(
        async { s.read_packet(MAX_LEN).await.map(|p| p.map(<[u8]>::to_vec)) },
        async {
            peer.write_all(&big).await.unwrap();
        },
    );
    assert_eq!(read.unwrap().as_deref(), Some(&big[..]));
}

#[test]
fn a_length_word_claiming_32_mib_allocates_only_what_arrived() {
    let (mut peer, ours) = duplex(1 << 16);
    let mut s = PacketStream::new(ours);
    block_on(async {
        peer.write_all(&MAX_LEN.to_be_bytes()).await.unwrap();
        peer.write_all(&[0u8; 1000]).await.unwrap();
        drop(peer);
        let err = s.read_packet(MAX_LEN).await.unwrap_err();
        assert!(
            matches!(err, ReadError::Truncated { got: 1004, want } if want == MAX_LEN as usize),
            "{err:?}"
        );
        assert_eq!(err.reason(), "truncated");
    });
    // What arrived plus one read's worth, at most doubled by Vec's growth: far from 32 MiB.
    assert!(
        s.buf.capacity() <= 2 * (1004 + READ_CHUNK),
        "buffer grew to {} bytes",
        s.buf.capacity()
    );
}

#[test]
fn a_packet_over_the_callers_limit_is_refused_before_its_body_is_read() {
    let (mut peer, ours) = duplex(1 << 16);
    block_on(async {
        peer.write_all(&65_537u32.to_be_bytes()).await.unwrap();
        let mut s = PacketStream::new(ours);
        let err = s.read_packet(65_536).await.unwrap_err();
        assert!(matches!(
            err,
            ReadError::TooLarge {
                len: 65_537,
                max: 65_536
            }
        ));
        assert_eq!(
            err.to_string(),
            "a packet of 65537 bytes exceeds the 65536 allowed here"
        );
    });
}

#[test]
fn lengths_outside_libvirts_limits_are_frame_errors() {
    let (mut peer, ours) = duplex(1 << 16);
    block_on(async {
        peer.write_all(&3u32.to_be_bytes()).await.unwrap();
        let mut s = PacketStream::new(ours);
        let err = s.read_packet(MAX_LEN).await.unwrap_err();
        assert!(matches!(err, ReadError::Frame(FrameError::BadLength(3))));
        assert_eq!(err.reason(), "length_too_small");
    });
}

#[test]
fn an_end_inside_the_length_word_is_truncated() {
    let (mut peer, ours) = duplex(1 << 16);
    block_on(async {
        peer.write_all(&[0, 0]).await.unwrap();
        drop(peer);
        let mut s = PacketStream::new(ours);
        let err = s.read_packet(MAX_LEN).await.unwrap_err();
        assert!(matches!(err, ReadError::Truncated { got: 2, want: 4 }));
    });
}

#[test]
fn a_cancelled_read_keeps_its_bytes_for_the_next_call() {
    let (mut peer, ours) = duplex(1 << 16);
    let packet = call(Program::Remote, 1, 2, &[0, 0, 0, 0, 0, 0, 0, 0]);
    let mut s = PacketStream::new(ours);
    block_on(async { peer.write_all(&packet[..10]).await.unwrap() });
    {
        let waker = waker();
        let mut cx = Context::from_waker(&waker);
        let mut read = pin!(s.read_packet(MAX_LEN));
        assert!(read.as_mut().poll(&mut cx).is_pending());
    }
    block_on(async {
        peer.write_all(&packet[10..]).await.unwrap();
        assert_eq!(s.read_packet(MAX_LEN).await.unwrap(), Some(&packet[..]));
    });
}

#[test]
fn writes_whole_packets_and_hands_over_the_stream_at_a_packet_boundary() {
    let (mut peer, ours) = duplex(1 << 16);
    block_on(async {
        let mut s = PacketStream::new(ours);
        s.write_packet(&pong()).await.unwrap();
        let mut got = [0u8; 28];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got.to_vec(), pong());

        peer.write_all(&pong()).await.unwrap();
        peer.write_all(&call(Program::Remote, 2, 9, &[]))
            .await
            .unwrap();
        let h = Header::parse(s.read_packet(MAX_LEN).await.unwrap().unwrap()).unwrap();
        assert_eq!(h.program, Program::Keepalive);
        s.get_mut().write_all(&[1]).await.unwrap();
        let mut rest = s.into_inner();
        let mut next = [0u8; 28];
        rest.read_exact(&mut next).await.unwrap();
        assert_eq!(Header::parse(&next).map(|h| h.serial), Ok(9));
        assert_eq!(peer.read_u8().await.unwrap(), 1);
    });
}
