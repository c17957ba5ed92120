//! Connection threads: each accepted connection lives its whole life on one thread.
//!
//! A relayed libvirt call is a ping-pong: the client's call wakes the gateway, which writes it to
//! the host, whose reply wakes the gateway again. On a work-stealing runtime the thread that
//! polls the I/O driver often is not the one that runs the connection's task, so every wake-up
//! may cross threads (and cores); the benchmark showed connections falling into a slow mode
//! that way. Like Pingora's `work_stealing = false`, the gateway therefore runs N single-thread
//! runtimes and hands each accepted socket to the least busy one; the socket's readiness, its
//! task and its timers then stay on that thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::handshakes::HandshakeSlot;
use crate::session::{serve, Gateway};

/// One accepted connection on its way to a connection thread.
pub(crate) struct Accepted {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub bound_host: Option<String>,
    pub permit: OwnedSemaphorePermit,
    /// Held until the connection has passed its handshake.
    pub handshake: HandshakeSlot,
}

struct Worker {
    queue: mpsc::UnboundedSender<Accepted>,
    /// Connections handed to this worker and not yet finished.
    load: Arc<AtomicUsize>,
    /// Its thread is gone; never chosen again.
    stopped: AtomicBool,
}

/// The pool of connection threads.
pub(crate) struct ConnectionThreads {
    workers: Vec<Worker>,
    next: AtomicUsize,
    exited: Vec<oneshot::Receiver<()>>,
}

impl ConnectionThreads {
    /// Starts `threads` threads (0: one per CPU).
    pub fn start(
        threads: usize,
        gateway: Arc<Gateway>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let mut workers = Vec::with_capacity(threads);
        let mut exited = Vec::with_capacity(threads);
        for index in 0..threads {
            let (queue, jobs) = mpsc::unbounded_channel();
            let (done, exit) = oneshot::channel();
            let (built, ready) = std::sync::mpsc::channel();
            let load = Arc::new(AtomicUsize::new(0));
            let worker_load = load.clone();
            let gateway = gateway.clone();
            let shutdown = shutdown.clone();
            // The runtime is built on its own thread: a runtime dropped inside the caller's
            // async context (should spawning fail) would panic.
            std::thread::Builder::new()
                .name(format!("virtgate-conn-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => {
                            let _ = built.send(Ok(()));
                            runtime
                        }
                        Err(e) => {
                            let _ = built.send(Err(e));
                            return;
                        }
                    };
                    runtime.block_on(run_worker(jobs, gateway, shutdown, worker_load));
                    let _ = done.send(());
                })?;
            ready
                .recv()
                .map_err(|_| std::io::Error::other("connection thread exited while starting"))??;
            workers.push(Worker {
                queue,
                load,
                stopped: AtomicBool::new(false),
            });
            exited.push(exit);
        }
        Ok(Self {
            workers,
            next: AtomicUsize::new(0),
            exited,
        })
    }

    /// Hands a connection to the thread with the fewest connections (ties: round robin).
    pub fn dispatch(&self, accepted: Accepted) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.workers.len();
        let worker = (0..count)
            .map(|offset| &self.workers[(start + offset) % count])
            .min_by_key(|w| {
                if w.stopped.load(Ordering::Relaxed) {
                    usize::MAX
                } else {
                    w.load.load(Ordering::Relaxed)
                }
            })
            .expect("at least one connection thread");
        worker.load.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(lost)) = worker.queue.send(accepted) {
            worker.load.fetch_sub(1, Ordering::Relaxed);
            worker.stopped.store(true, Ordering::Relaxed);
            warn!(peer = %lost.peer, "connection dropped: its connection thread has stopped");
        }
    }

    /// Connections handed to the threads and not finished yet.
    pub fn open_connections(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until every thread has finished its connections (after shutdown was signalled).
    pub async fn join(self) {
        let Self {
            workers, exited, ..
        } = self;
        // Closing the queues lets each worker finish once its connections have.
        drop(workers);
        for exit in exited {
            let _ = exit.await;
        }
    }
}

async fn run_worker(
    mut jobs: mpsc::UnboundedReceiver<Accepted>,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
    load: Arc<AtomicUsize>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(Accepted { stream, peer, bound_host, permit, handshake }) = job else { break };
                let stream = match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(e) => {
                        load.fetch_sub(1, Ordering::Relaxed);
                        warn!(%peer, error = %e, "cannot register accepted connection");
                        continue;
                    }
                };
                let (gateway, shutdown) = (gateway.clone(), shutdown.clone());
                let counted = Counted(load.clone());
                connections.spawn(async move {
                    // Dropped even if serving panics (the JoinSet contains the panic).
                    let _counted = counted;
                    let _permit = permit;
                    serve(gateway, stream, peer, bound_host, handshake, shutdown).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = shutdown.cancelled() => break,
        }
    }
    // Relayed sessions close promptly on the stop signal; one still in its handshake or waiting
    // on a silent peer is cut off after the grace period rather than holding up the exit.
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!(
            connections = connections.len(),
            "connections still open {SHUTDOWN_GRACE:?} after the stop signal; closing them"
        );
        connections.shutdown().await;
    }
}

/// How long a stopping gateway waits for its connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Takes one connection off a worker's load when dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
