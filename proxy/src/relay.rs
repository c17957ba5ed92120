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
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use virtgate_rpc::{
    declared_len, error_reply, procedure_label, program_name, remote_count, ErrorDomain,
    ErrorNumber, Header, MessageType, Program, HEADER_LEN, MAX_LEN,
};

use crate::metrics::ProxyMetrics;

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

/// How long the relay waits on quiet or stuck peers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayLimits {
    /// No packet in either direction for this long closes the connection.
    pub idle_timeout: Duration,
    /// A peer that accepts no data for this long is cut off.
    pub write_timeout: Duration,
}

/// A call waiting for its reply.
#[derive(Clone, Copy)]
struct InFlight {
    started: Instant,
    program: Program,
    procedure: u32,
}

/// What both directions of one relayed connection share.
struct RelayState<'a> {
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

impl RelayState<'_> {
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

    fn quiet_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_packet_ms.load(Ordering::Relaxed)))
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
    limits: RelayLimits,
    shutdown: CancellationToken,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (client_r, mut client_w) = tokio::io::split(client);
    let (backend_r, mut backend_w) = tokio::io::split(backend);
    let state = RelayState {
        host,
        metrics,
        rpc_duration: metrics.rpc_duration.with_label_values(&[host]),
        in_flight: Mutex::new(HashMap::with_capacity(32)),
        write_timeout: limits.write_timeout,
        client_done: AtomicBool::new(false),
        writing_to_client: AtomicBool::new(false),
        last_packet_ms: AtomicU64::new(0),
        epoch: Instant::now(),
    };
    let mut up = Pump::new(client_r, Direction::ToHost, &state);
    let mut down = Pump::new(backend_r, Direction::ToClient, &state);
    let outcome = {
        let up_run = up.run(&mut backend_w);
        let down_run = down.run(&mut client_w);
        let idle = idle(&state, limits.idle_timeout);
        tokio::pin!(up_run, down_run, idle);
        let first = tokio::select! {
            end = &mut up_run => (Direction::ToHost, Some(end)),
            end = &mut down_run => (Direction::ToClient, Some(end)),
            () = &mut idle => (Direction::ToHost, None),
            () = shutdown.cancelled() => (Direction::ToClient, None),
        };
        let draining =
            matches!(first, (Direction::ToHost, Some(PumpEnd::Eof))) && state.client_closed();
        if draining {
            // The client closed its sending side with calls still waiting: relay their replies
            // (and any events meanwhile) before closing, so every call sent gets its answer.
            // (A direct libvirtd races here: it may close before answering.)
            tracing::debug!(
                host,
                "client closed its side with calls in flight; relaying their replies first"
            );
            let end = tokio::select! {
                end = &mut down_run => (Direction::ToClient, Some(end)),
                () = &mut idle => (Direction::ToHost, None),
                () = shutdown.cancelled() => (Direction::ToClient, None),
            };
            (end, true)
        } else {
            (first, false)
        }
    };
    let ((direction, pump_end), half_closed) = outcome;
    let end = match (direction, pump_end) {
        (_, None) if shutdown.is_cancelled() => RelayEnd::Shutdown,
        (_, None) => RelayEnd::Idle,
        (Direction::ToHost, Some(end)) => client_side_end(end),
        (Direction::ToClient, Some(PumpEnd::Drained)) => RelayEnd::ClientClosed,
        (Direction::ToClient, Some(PumpEnd::Stalled)) => RelayEnd::Protocol {
            side: "client",
            reason: "stalled",
        },
        (Direction::ToClient, Some(end)) => {
            host_side_end(end, &state, &mut client_w, half_closed).await
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
        calls: up.calls,
        to_host: up.bytes,
        to_client: down.bytes,
    }
}

/// Resolves once no packet has moved for `idle_timeout`.
async fn idle(state: &RelayState<'_>, idle_timeout: Duration) {
    let tick = (idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        tokio::time::sleep(tick).await;
        if state.quiet_for() >= idle_timeout {
            return;
        }
    }
}

/// How the connection ended when the client's direction ended first.
fn client_side_end(end: PumpEnd) -> RelayEnd {
    match end {
        PumpEnd::Protocol(reason) => RelayEnd::Protocol {
            side: "client",
            reason,
        },
        // A peer that stopped reading: cut off, counted with the side that stalled.
        PumpEnd::Stalled => RelayEnd::Protocol {
            side: "host",
            reason: "stalled",
        },
        PumpEnd::Eof | PumpEnd::Io | PumpEnd::Drained => RelayEnd::ClientClosed,
    }
}

/// The host went away (or broke the framing): fail every call still waiting, so the client
/// reports an error instead of waiting for a reply that will never come.
async fn host_side_end<W: AsyncWrite + Unpin>(
    end: PumpEnd,
    state: &RelayState<'_>,
    client_w: &mut W,
    half_closed: bool,
) -> RelayEnd {
    let waiting: Vec<(u32, InFlight)> = state
        .in_flight
        .lock()
        .expect("in-flight lock poisoned")
        .drain()
        .collect();
    let host = state.host;
    let fail_waiting = async {
        for (serial, call) in &waiting {
            let header = Header::call(call.program, call.procedure, *serial);
            let message = format!(
                "virtgate: host {host} closed the connection while this call was in progress"
            );
            let packet = error_reply(
                &header,
                ErrorNumber::SYSTEM_ERROR,
                ErrorDomain::FROM_RPC,
                &message,
            );
            if client_w.write_all(&packet).await.is_err() {
                break;
            }
        }
        let _ = client_w.flush().await;
    };
    // A client that stopped reading must not hold the connection open either.
    let _ = tokio::time::timeout(state.write_timeout, fail_waiting).await;
    match end {
        PumpEnd::Protocol(reason) => RelayEnd::Protocol {
            side: "host",
            reason,
        },
        _ if half_closed && waiting.is_empty() => RelayEnd::ClientClosed,
        PumpEnd::Eof | PumpEnd::Io | PumpEnd::Stalled | PumpEnd::Drained => RelayEnd::HostClosed {
            failed_calls: waiting.len(),
        },
    }
}

/// One direction of the relay: reads whole frames from `reader` and writes them on.
struct Pump<'s, 'a, R> {
    reader: ReadHalf<R>,
    direction: Direction,
    state: &'s RelayState<'a>,
    bytes_counter: IntCounter,
    /// Bytes forwarded.
    bytes: u64,
    /// Calls seen (towards the host).
    calls: u64,
    /// Per-connection cache of the per-procedure counters, so counting a call is an atomic add.
    call_counters: Vec<Option<IntCounter>>,
}

impl<'s, 'a, R: AsyncRead> Pump<'s, 'a, R> {
    fn new(reader: ReadHalf<R>, direction: Direction, state: &'s RelayState<'a>) -> Self {
        let (label, counters) = match direction {
            Direction::ToHost => ("to_host", vec![None; remote_count()]),
            Direction::ToClient => ("to_client", Vec::new()),
        };
        Self {
            reader,
            direction,
            state,
            bytes_counter: state.metrics.bytes_counter(state.host, label),
            bytes: 0,
            calls: 0,
            call_counters: counters,
        }
    }

    async fn run<W: AsyncWrite>(&mut self, writer: &mut WriteHalf<W>) -> PumpEnd {
        let mut buf = vec![0u8; INITIAL_BUFFER];
        let mut filled = 0usize;
        loop {
            if filled == buf.len() {
                // The buffer holds the start of one frame larger than itself (complete frames
                // were forwarded and compacted away); the frame's validated length bounds the
                // growth.
                let need = declared_len(&buf).and_then(Result::ok).unwrap_or(0) as usize;
                buf.resize(need.max(buf.len() * 2).min(MAX_LEN as usize), 0);
            }
            let n = match self.reader.read(&mut buf[filled..]).await {
                Ok(n) if n > 0 => n,
                // End of stream, with or without TLS close_notify (libvirt clients just close
                // the socket).
                Ok(_) => return PumpEnd::Eof,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return PumpEnd::Eof,
                Err(_) => return PumpEnd::Io,
            };
            filled += n;
            self.state.touch();
            let complete = match self.scan(&buf[..filled]) {
                Ok(complete) => complete,
                Err(reason) => return PumpEnd::Protocol(reason),
            };
            if complete > 0 {
                if let Some(end) = self.forward(writer, &buf[..complete]).await {
                    return end;
                }
                buf.copy_within(complete..filled, 0);
                filled -= complete;
            }
            if let Some(Ok(len)) = declared_len(&buf[..filled]) {
                if len as usize > buf.len() {
                    buf.resize(len as usize, 0);
                }
            }
        }
    }

    /// The length of the complete frames at the start of `buf`, each observed once.
    fn scan(&mut self, buf: &[u8]) -> Result<usize, &'static str> {
        let mut complete = 0usize;
        while let Some(len) = declared_len(&buf[complete..]) {
            let len = len.map_err(|e| e.reason())? as usize;
            if buf.len() - complete < len {
                break;
            }
            let header =
                Header::parse(&buf[complete..complete + HEADER_LEN]).map_err(|e| e.reason())?;
            self.observe(&header);
            complete += len;
        }
        Ok(complete)
    }

    /// Writes complete frames on; `Some` when the pump must end.
    async fn forward<W: AsyncWrite>(
        &mut self,
        writer: &mut WriteHalf<W>,
        frames: &[u8],
    ) -> Option<PumpEnd> {
        let state = self.state;
        let write = async {
            // One write per message, so each message gets its own TLS record(s) as libvirt
            // sends them: libvirtd (GnuTLS) does not notice a second message already
            // decrypted inside the record it read, and would sit on it until more bytes
            // arrive. The usual read holds one message, so this is still one system call.
            let mut at = 0;
            while at < frames.len() {
                let len = declared_len(&frames[at..])
                    .and_then(Result::ok)
                    .map_or(frames.len() - at, |len| len as usize);
                writer.write_all(&frames[at..at + len]).await?;
                at += len;
            }
            writer.flush().await
        };
        let to_client = self.direction == Direction::ToClient;
        if to_client {
            state.writing_to_client.store(true, Ordering::Relaxed);
        }
        match tokio::time::timeout(state.write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Some(PumpEnd::Io),
            Err(_) => return Some(PumpEnd::Stalled),
        }
        if to_client {
            state.writing_to_client.store(false, Ordering::Relaxed);
        }
        self.bytes_counter.inc_by(frames.len() as u64);
        self.bytes += frames.len() as u64;
        let drained =
            to_client && state.client_done.load(Ordering::Relaxed) && state.nothing_in_flight();
        drained.then_some(PumpEnd::Drained)
    }

    fn observe(&mut self, h: &Header) {
        let state = self.state;
        match (self.direction, h.kind) {
            (Direction::ToHost, MessageType::Call) => {
                self.calls += 1;
                state
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
                self.count_call(h.program, h.procedure);
            }
            (Direction::ToClient, MessageType::Reply) => {
                let call = state
                    .in_flight
                    .lock()
                    .expect("in-flight lock poisoned")
                    .remove(&h.serial);
                if let Some(call) = call {
                    state
                        .rpc_duration
                        .observe(call.started.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
    }

    /// One more call of `procedure`. Labels come from a fixed set (unknown procedures and
    /// programs are `other`), so a client cannot grow the metrics by inventing numbers.
    fn count_call(&mut self, program: Program, procedure: u32) {
        let state = self.state;
        let label = procedure_label(program, procedure);
        let cached = (program == Program::Remote)
            .then(|| self.call_counters.get_mut(procedure as usize))
            .flatten();
        match cached {
            Some(slot) => slot
                .get_or_insert_with(|| {
                    state
                        .metrics
                        .rpc_calls
                        .with_label_values(&[state.host, "remote", label])
                })
                .inc(),
            None => state
                .metrics
                .rpc_calls
                .with_label_values(&[state.host, program_name(program), label])
                .inc(),
        }
    }
}
