//! The relay: frames both ways, in order, validated, counted.
//!
//! Each direction reads into one reusable buffer and forwards every complete frame it holds, each
//! in its own TLS record(s), so the hot path does no allocation per frame (a buffer only grows for
//! a frame larger than it). Calls are matched with their replies by serial for latency metrics and so
//! that, if the host goes away mid-call, the client gets an error reply for each call in flight
//! instead of a hang.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::frame::{self, err, Header, HEADER_LEN};
use crate::metrics::ProxyMetrics;
use crate::procedures::{procedure_name, program_name, remote_count};

const INITIAL_BUFFER: usize = 64 * 1024;

pub(crate) enum RelayEnd {
    ClientClosed,
    HostClosed {
        failed_calls: usize,
    },
    Idle,
    Shutdown,
    Protocol {
        side: &'static str,
        reason: &'static str,
    },
}

pub(crate) struct RelayStats {
    pub end: RelayEnd,
    pub calls: u64,
    pub to_host: u64,
    pub to_client: u64,
}

/// A call waiting for its reply.
#[derive(Clone, Copy)]
struct InFlight {
    started: Instant,
    program: u32,
    procedure: u32,
}

struct Shared<'a> {
    host: &'a str,
    metrics: &'a ProxyMetrics,
    rpc_duration: prometheus::Histogram,
    in_flight: Mutex<HashMap<u32, InFlight>>,
    last_packet_ms: AtomicU64,
    epoch: Instant,
    write_timeout: Duration,
    /// Set once the client has closed its sending side; the pump to the client then ends
    /// (`Drained`) once the last reply has been written.
    client_done: AtomicBool,
    /// Frames to the client are being written (replies no longer in `in_flight` but not sent).
    writing_to_client: AtomicBool,
}

impl Shared<'_> {
    fn nothing_in_flight(&self) -> bool {
        self.in_flight
            .lock()
            .expect("in-flight lock poisoned")
            .is_empty()
    }

    /// Records that the client closed its side; true when calls are still waiting for replies
    /// or a reply is being written.
    fn client_closed(&self) -> bool {
        self.client_done.store(true, Ordering::Relaxed);
        self.writing_to_client.load(Ordering::Relaxed) || !self.nothing_in_flight()
    }

    fn touch(&self) {
        self.last_packet_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

enum PumpEnd {
    Eof,
    Io,
    Protocol(&'static str),
    /// The receiving side accepted nothing for `write_timeout`.
    Stalled,
    /// The client has closed its side and every reply it was owed has been written.
    Drained,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToHost,
    ToClient,
}

pub(crate) async fn relay<C, B>(
    client: C,
    backend: B,
    host: &str,
    metrics: &ProxyMetrics,
    idle_timeout: Duration,
    write_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut backend_r, mut backend_w) = tokio::io::split(backend);
    let shared = Shared {
        host,
        metrics,
        rpc_duration: metrics.rpc_duration.with_label_values(&[host]),
        in_flight: Mutex::new(HashMap::with_capacity(32)),
        write_timeout,
        client_done: AtomicBool::new(false),
        writing_to_client: AtomicBool::new(false),
        last_packet_ms: AtomicU64::new(0),
        epoch: Instant::now(),
    };
    let to_host_bytes = metrics.bytes_counter(host, "to_host");
    let to_client_bytes = metrics.bytes_counter(host, "to_client");
    let mut calls = 0u64;
    let mut replies = 0u64;
    let (mut to_host, mut to_client) = (0u64, 0u64);
    let mut half_closed = false;

    let outcome = {
        let up = pump(
            &mut client_r,
            &mut backend_w,
            Direction::ToHost,
            &shared,
            &to_host_bytes,
            &mut to_host,
            &mut calls,
        );
        let down = pump(
            &mut backend_r,
            &mut client_w,
            Direction::ToClient,
            &shared,
            &to_client_bytes,
            &mut to_client,
            &mut replies,
        );
        let idle = async {
            let tick =
                (idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
            loop {
                tokio::time::sleep(tick).await;
                let quiet = shared.epoch.elapsed().as_millis() as u64
                    - shared.last_packet_ms.load(Ordering::Relaxed);
                if quiet >= idle_timeout.as_millis() as u64 {
                    return;
                }
            }
        };
        tokio::pin!(up, down, idle);
        let first = tokio::select! {
            end = &mut up => (Direction::ToHost, Some(end)),
            end = &mut down => (Direction::ToClient, Some(end)),
            _ = &mut idle => (Direction::ToHost, None),
            _ = shutdown.changed() => (Direction::ToClient, None),
        };
        let draining =
            matches!(first, (Direction::ToHost, Some(PumpEnd::Eof))) && shared.client_closed();
        if draining {
            // The client closed its sending side with calls still waiting: relay their replies
            // (and any events meanwhile) before closing, so every call sent gets its answer.
            // (A direct libvirtd races here: it may close before answering.)
            half_closed = true;
            tracing::debug!(
                host,
                "client closed its side with calls in flight; relaying their replies first"
            );
            tokio::select! {
                end = &mut down => (Direction::ToClient, Some(end)),
                _ = &mut idle => (Direction::ToHost, None),
                _ = shutdown.changed() => (Direction::ToClient, None),
            }
        } else {
            first
        }
    };

    let end = match outcome {
        (_, None) if *shutdown.borrow() => RelayEnd::Shutdown,
        (_, None) => RelayEnd::Idle,
        (Direction::ToHost, Some(PumpEnd::Protocol(reason))) => RelayEnd::Protocol {
            side: "client",
            reason,
        },
        // A peer that stopped reading: cut off, counted with the side that stalled.
        (Direction::ToHost, Some(PumpEnd::Stalled)) => RelayEnd::Protocol {
            side: "host",
            reason: "stalled",
        },
        (Direction::ToClient, Some(PumpEnd::Stalled)) => RelayEnd::Protocol {
            side: "client",
            reason: "stalled",
        },
        (Direction::ToHost, Some(_)) | (Direction::ToClient, Some(PumpEnd::Drained)) => {
            RelayEnd::ClientClosed
        }
        (Direction::ToClient, Some(end)) => {
            // The host went away (or broke the framing): fail every call still waiting, so the
            // client reports an error instead of waiting for a reply that will never come.
            let waiting: Vec<(u32, InFlight)> = shared
                .in_flight
                .lock()
                .expect("in-flight lock poisoned")
                .drain()
                .collect();
            let fail_waiting = async {
                for (serial, call) in &waiting {
                    let header = Header {
                        len: 0,
                        program: call.program,
                        version: 1,
                        procedure: call.procedure,
                        kind: frame::TYPE_CALL,
                        serial: *serial,
                        status: frame::STATUS_OK,
                    };
                    let message = format!(
                        "virtgate: host {host} closed the connection while this call was in progress"
                    );
                    let packet =
                        frame::error_reply(&header, err::SYSTEM_ERROR, err::FROM_RPC, &message);
                    if client_w.write_all(&packet).await.is_err() {
                        break;
                    }
                }
                let _ = client_w.flush().await;
            };
            // A client that stopped reading must not hold the connection open either.
            let _ = tokio::time::timeout(write_timeout, fail_waiting).await;
            match end {
                PumpEnd::Protocol(reason) => RelayEnd::Protocol {
                    side: "host",
                    reason,
                },
                _ if half_closed && waiting.is_empty() => RelayEnd::ClientClosed,
                PumpEnd::Eof | PumpEnd::Io | PumpEnd::Stalled | PumpEnd::Drained => {
                    RelayEnd::HostClosed {
                        failed_calls: waiting.len(),
                    }
                }
            }
        }
    };
    // Close both sides; TLS close_notify where the peer is still there.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = backend_w.shutdown().await;
        let _ = client_w.shutdown().await;
    })
    .await;
    RelayStats {
        end,
        calls,
        to_host,
        to_client,
    }
}

#[allow(clippy::too_many_arguments)]
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    direction: Direction,
    shared: &Shared<'_>,
    bytes: &IntCounter,
    total: &mut u64,
    calls: &mut u64,
) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; INITIAL_BUFFER];
    let mut filled = 0usize;
    // Per-connection cache of the per-procedure counters, so counting a call is an atomic add.
    let mut call_counters: Vec<Option<IntCounter>> = if direction == Direction::ToHost {
        vec![None; remote_count()]
    } else {
        Vec::new()
    };
    loop {
        if filled == buf.len() {
            // The buffer holds the start of one frame larger than itself (complete frames were
            // forwarded and compacted away); the frame's validated length bounds the growth.
            let need = frame::declared_len(&buf).and_then(Result::ok).unwrap_or(0) as usize;
            buf.resize(need.max(buf.len() * 2).min(frame::MAX_LEN as usize), 0);
        }
        let n = match reader.read(&mut buf[filled..]).await {
            Ok(n) if n > 0 => n,
            // End of stream, with or without TLS close_notify (libvirt clients just close the
            // socket).
            Ok(_) => return PumpEnd::Eof,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return PumpEnd::Eof,
            Err(_) => return PumpEnd::Io,
        };
        filled += n;
        shared.touch();
        let mut complete = 0usize;
        while let Some(len) = frame::declared_len(&buf[complete..filled]) {
            let len = match len {
                Ok(l) => l as usize,
                Err(e) => return PumpEnd::Protocol(e.reason()),
            };
            if filled - complete < len {
                break;
            }
            let header = Header::parse(&buf[complete..complete + HEADER_LEN]);
            observe(&header, direction, shared, &mut call_counters, calls);
            complete += len;
        }
        if complete > 0 {
            let write = async {
                // One write per message, so each message gets its own TLS record(s) as libvirt
                // sends them: libvirtd (GnuTLS) does not notice a second message already
                // decrypted inside the record it read, and would sit on it until more bytes
                // arrive. The usual read holds one message, so this is still one system call.
                let mut at = 0;
                while at < complete {
                    let len = frame::declared_len(&buf[at..complete])
                        .and_then(Result::ok)
                        .map_or(complete - at, |len| len as usize);
                    writer.write_all(&buf[at..at + len]).await?;
                    at += len;
                }
                writer.flush().await
            };
            if direction == Direction::ToClient {
                shared.writing_to_client.store(true, Ordering::Relaxed);
            }
            match tokio::time::timeout(shared.write_timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return PumpEnd::Io,
                Err(_) => return PumpEnd::Stalled,
            }
            if direction == Direction::ToClient {
                shared.writing_to_client.store(false, Ordering::Relaxed);
            }
            bytes.inc_by(complete as u64);
            *total += complete as u64;
            if direction == Direction::ToClient
                && shared.client_done.load(Ordering::Relaxed)
                && shared.nothing_in_flight()
            {
                return PumpEnd::Drained;
            }
            buf.copy_within(complete..filled, 0);
            filled -= complete;
        }
        if let Some(Ok(len)) = frame::declared_len(&buf[..filled]) {
            if len as usize > buf.len() {
                buf.resize(len as usize, 0);
            }
        }
    }
}

fn observe(
    h: &Header,
    direction: Direction,
    shared: &Shared<'_>,
    counters: &mut [Option<IntCounter>],
    calls: &mut u64,
) {
    match (direction, h.kind) {
        (Direction::ToHost, frame::TYPE_CALL) => {
            *calls += 1;
            shared
                .in_flight
                .lock()
                .expect("in-flight lock poisoned")
                .insert(
                    h.serial,
                    InFlight {
                        started: Instant::now(),
                        program: h.program,
                        procedure: h.procedure,
                    },
                );
            let cached = (h.program == frame::PROGRAM_REMOTE)
                .then(|| counters.get_mut(h.procedure as usize))
                .flatten();
            match cached {
                Some(slot) => slot
                    .get_or_insert_with(|| {
                        shared.metrics.rpc_calls.with_label_values(&[
                            shared.host,
                            "remote",
                            &procedure_name(h.program, h.procedure),
                        ])
                    })
                    .inc(),
                None => shared
                    .metrics
                    .rpc_calls
                    .with_label_values(&[
                        shared.host,
                        program_name(h.program),
                        &procedure_name(h.program, h.procedure),
                    ])
                    .inc(),
            }
        }
        (Direction::ToClient, frame::TYPE_REPLY) => {
            let call = shared
                .in_flight
                .lock()
                .expect("in-flight lock poisoned")
                .remove(&h.serial);
            if let Some(call) = call {
                shared
                    .rpc_duration
                    .observe(call.started.elapsed().as_secs_f64());
            }
        }
        _ => {}
    }
}
