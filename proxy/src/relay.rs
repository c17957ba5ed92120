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
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use virtgate_rpc::{
    declared_len, error_reply, procedure_label, program_name, remote_count, ErrorDomain,
    ErrorNumber, Header, MessageType, Program, HEADER_LEN, MAX_LEN,
};

use crate::calls::{CallGuard, RefusedCall};
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
    /// The client made a call that changes who the connection is; the gateway answered it
    /// and closed.
    Refused(RefusedCall),
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
    /// The client made a call that ends the connection (answered already).
    Refused(RefusedCall),
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

/// What one relayed connection is checked against and counted as.
pub(crate) struct RelayContext<'a> {
    pub host: &'a str,
    pub metrics: &'a ProxyMetrics,
    pub limits: RelayLimits,
    /// What the client may call (for everyone: nothing that changes who the connection is).
    pub guard: &'a CallGuard,
    pub shutdown: CancellationToken,
}

/// How the first of the relay's contenders finished.
enum First {
    Pump(Direction, PumpEnd),
    Idle,
    Shutdown,
}

/// Relays until one side ends, the connection idles, or `cx.shutdown` is cancelled (the gateway
/// stops, or the session lost its grounds).
pub(crate) async fn relay<C, B>(client: C, backend: B, cx: RelayContext<'_>) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let RelayContext {
        host,
        metrics,
        limits,
        guard,
        shutdown,
    } = cx;
    let (client_r, client_w) = tokio::io::split(client);
    let (backend_r, mut backend_w) = tokio::io::split(backend);
    // Both directions write to the client: the host's frames, and the gateway's own answers to
    // calls it does not forward. One lock keeps each frame whole.
    let client_w = AsyncMutex::new(client_w);
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
    let mut up = Pump::new(client_r, Direction::ToHost, &state, Some(guard));
    let mut down = Pump::new(backend_r, Direction::ToClient, &state, None);
    let (first, half_closed) = {
        let up_run = up.run(&mut backend_w, &client_w);
        let down_run = down.run(SharedWriter(&client_w), &client_w);
        let idle = idle(&state, limits.idle_timeout);
        tokio::pin!(up_run, down_run, idle);
        let first = tokio::select! {
            end = &mut up_run => First::Pump(Direction::ToHost, end),
            end = &mut down_run => First::Pump(Direction::ToClient, end),
            () = &mut idle => First::Idle,
            () = shutdown.cancelled() => First::Shutdown,
        };
        let draining =
            matches!(first, First::Pump(Direction::ToHost, PumpEnd::Eof)) && state.client_closed();
        if draining {
            // The client closed its sending side with calls still waiting: relay their replies
            // (and any events meanwhile) before closing, so every call sent gets its answer.
            // (A direct libvirtd races here: it may close before answering.)
            tracing::debug!(
                host,
                "client closed its side with calls in flight; relaying their replies first"
            );
            let end = tokio::select! {
                end = &mut down_run => First::Pump(Direction::ToClient, end),
                () = &mut idle => First::Idle,
                () = shutdown.cancelled() => First::Shutdown,
            };
            (end, true)
        } else {
            (first, false)
        }
    };
    let mut client_w = client_w.into_inner();
    let end = match first {
        First::Shutdown => RelayEnd::Shutdown,
        First::Idle => RelayEnd::Idle,
        First::Pump(Direction::ToHost, end) => client_side_end(end),
        First::Pump(Direction::ToClient, PumpEnd::Drained) => RelayEnd::ClientClosed,
        First::Pump(Direction::ToClient, PumpEnd::Stalled) => RelayEnd::Protocol {
            side: "client",
            reason: "stalled",
        },
        First::Pump(Direction::ToClient, end) => {
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
        PumpEnd::Refused(reason) => RelayEnd::Refused(reason),
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
        PumpEnd::Eof | PumpEnd::Io | PumpEnd::Stalled | PumpEnd::Drained | PumpEnd::Refused(_) => {
            RelayEnd::HostClosed {
                failed_calls: waiting.len(),
            }
        }
    }
}

/// Where a pump writes complete frames: straight to its peer, or through the lock both
/// directions share for the client.
trait FrameSink {
    /// Writes `frames` (whole frames), one write per message, and flushes.
    async fn send_frames(&mut self, frames: &[u8]) -> std::io::Result<()>;
}

impl<W: AsyncWrite> FrameSink for WriteHalf<W> {
    async fn send_frames(&mut self, frames: &[u8]) -> std::io::Result<()> {
        // One write per message, so each message gets its own TLS record(s) as libvirt sends
        // them: libvirtd (GnuTLS) does not notice a second message already decrypted inside the
        // record it read, and would sit on it until more bytes arrive. The usual read holds one
        // message, so this is still one system call.
        let mut at = 0;
        while at < frames.len() {
            let len = declared_len(&frames[at..])
                .and_then(Result::ok)
                .map_or(frames.len() - at, |len| len as usize);
            self.write_all(&frames[at..at + len]).await?;
            at += len;
        }
        self.flush().await
    }
}

impl<W: AsyncWrite> FrameSink for &mut WriteHalf<W> {
    async fn send_frames(&mut self, frames: &[u8]) -> std::io::Result<()> {
        (**self).send_frames(frames).await
    }
}

/// The client's writer, shared by both directions.
struct SharedWriter<'w, C>(&'w AsyncMutex<WriteHalf<C>>);

impl<C: AsyncWrite> FrameSink for SharedWriter<'_, C> {
    async fn send_frames(&mut self, frames: &[u8]) -> std::io::Result<()> {
        self.0.lock().await.send_frames(frames).await
    }
}

/// How big a buffer holding the incomplete start of a `need`-byte frame grows next: it doubles
/// as data arrives, up to the frame's length, so a length word alone (up to 32 MiB claimed)
/// costs no more memory than the bytes that really came.
fn grown(len: usize, need: usize) -> usize {
    need.clamp(len + 1, len.saturating_mul(2))
        .min(MAX_LEN as usize)
}

/// One direction of the relay: reads whole frames from `reader` and writes them on.
struct Pump<'s, 'a, R> {
    reader: ReadHalf<R>,
    direction: Direction,
    state: &'s RelayState<'a>,
    /// Towards the host: what the client may call.
    guard: Option<&'s CallGuard>,
    bytes_counter: IntCounter,
    /// Bytes forwarded.
    bytes: u64,
    /// Calls seen (towards the host).
    calls: u64,
    /// Per-connection cache of the per-procedure counters, so counting a call is an atomic add.
    call_counters: Vec<Option<IntCounter>>,
}

/// What a scan of the buffer found: complete frames to forward, and maybe a call to answer.
struct Scan {
    /// Bytes of complete frames to forward, from the start.
    forward: usize,
    /// A refused call right after them: its header, its length, the answer.
    refused: Option<(Header, usize, crate::calls::Refusal)>,
}

impl<'s, 'a, R: AsyncRead> Pump<'s, 'a, R> {
    fn new(
        reader: ReadHalf<R>,
        direction: Direction,
        state: &'s RelayState<'a>,
        guard: Option<&'s CallGuard>,
    ) -> Self {
        let (label, counters) = match direction {
            Direction::ToHost => ("to_host", vec![None; remote_count()]),
            Direction::ToClient => ("to_client", Vec::new()),
        };
        Self {
            reader,
            direction,
            state,
            guard,
            bytes_counter: state.metrics.bytes_counter(state.host, label),
            bytes: 0,
            calls: 0,
            call_counters: counters,
        }
    }

    async fn run<C: AsyncWrite>(
        &mut self,
        mut out: impl FrameSink,
        client: &AsyncMutex<WriteHalf<C>>,
    ) -> PumpEnd {
        let mut buf = vec![0u8; INITIAL_BUFFER];
        let mut filled = 0usize;
        loop {
            if filled == buf.len() {
                // The buffer holds the start of one frame larger than itself (complete frames
                // were forwarded and compacted away); it grows as the frame's bytes arrive.
                let need = declared_len(&buf).and_then(Result::ok).unwrap_or(0) as usize;
                buf.resize(grown(buf.len(), need), 0);
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
            let mut start = 0;
            loop {
                let scan = match self.scan(&buf[start..filled]) {
                    Ok(scan) => scan,
                    Err(reason) => return PumpEnd::Protocol(reason),
                };
                if scan.forward > 0 {
                    let frames = &buf[start..start + scan.forward];
                    if let Some(end) = self.forward(&mut out, frames).await {
                        return end;
                    }
                    start += scan.forward;
                }
                let Some((header, len, refusal)) = scan.refused else {
                    break;
                };
                start += len;
                if let Some(end) = self.answer(client, &header, refusal).await {
                    return end;
                }
            }
            if start > 0 {
                buf.copy_within(start..filled, 0);
                filled -= start;
            }
        }
    }

    /// The complete frames at the start of `buf` the pump may forward, each observed once,
    /// stopping at a call the client may not make.
    fn scan(&mut self, buf: &[u8]) -> Result<Scan, &'static str> {
        let mut complete = 0usize;
        while let Some(len) = declared_len(&buf[complete..]) {
            let len = len.map_err(|e| e.reason())? as usize;
            if buf.len() - complete < len {
                break;
            }
            let header =
                Header::parse(&buf[complete..complete + HEADER_LEN]).map_err(|e| e.reason())?;
            if let Some(refusal) = self.guard.and_then(|g| g.check(&header)) {
                return Ok(Scan {
                    forward: complete,
                    refused: Some((header, len, refusal)),
                });
            }
            self.observe(&header);
            complete += len;
        }
        Ok(Scan {
            forward: complete,
            refused: None,
        })
    }

    /// Answers a call the gateway does not forward, and counts it; `Some` when the pump must
    /// end (the call was one that closes the connection, or the client stopped reading).
    async fn answer<C: AsyncWrite>(
        &mut self,
        client: &AsyncMutex<WriteHalf<C>>,
        call: &Header,
        refusal: crate::calls::Refusal,
    ) -> Option<PumpEnd> {
        let state = self.state;
        state
            .metrics
            .calls_refused
            .with_label_values(&[refusal.reason.as_str()])
            .inc();
        tracing::info!(
            host = state.host,
            reason = refusal.reason.as_str(),
            procedure = call.procedure,
            "call refused by the gateway: {}",
            refusal.message
        );
        let reply = error_reply(call, refusal.code, refusal.domain, &refusal.message);
        let write = async { client.lock().await.send_frames(&reply).await };
        match tokio::time::timeout(state.write_timeout, write).await {
            Ok(Ok(())) if refusal.reason.closes() => Some(PumpEnd::Refused(refusal.reason)),
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(PumpEnd::Io),
            Err(_) => Some(PumpEnd::Stalled),
        }
    }

    /// Writes complete frames on; `Some` when the pump must end.
    async fn forward(&mut self, out: &mut impl FrameSink, frames: &[u8]) -> Option<PumpEnd> {
        let state = self.state;
        let to_client = self.direction == Direction::ToClient;
        if to_client {
            state.writing_to_client.store(true, Ordering::Relaxed);
        }
        match tokio::time::timeout(state.write_timeout, out.send_frames(frames)).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_grow_by_doubling_as_data_arrives_never_to_the_claimed_length_at_once() {
        let claimed = MAX_LEN as usize;
        let mut len = INITIAL_BUFFER;
        let mut steps = 0;
        while len < claimed {
            let next = grown(len, claimed);
            assert!(next <= len * 2, "{len} -> {next}");
            len = next;
            steps += 1;
        }
        assert_eq!(len, claimed);
        assert!(
            steps >= 9,
            "a 32 MiB frame is reached in doublings, not at once"
        );
        assert_eq!(
            grown(INITIAL_BUFFER, INITIAL_BUFFER + 10),
            INITIAL_BUFFER + 10
        );
    }
}
