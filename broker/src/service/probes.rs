//! The probe scheduler: every host again each `probe_interval`, failing ones sooner, and hosts
//! asked for at once — a new announcement, a static host, an operator's `virtgate hosts probe`,
//! or a gateway that was just shown a key other than a host's pin.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::probe::bypass::Checker as BypassChecker;
use crate::probe::{probe, ProbeError, ProbeErrorReason, ProbeResult};

/// At most one on-demand probe per host per this interval; requests in between are served by
/// one probe when it has passed. Whoever may read the inventory may ask, so hosts cannot be
/// hammered.
pub const ON_DEMAND_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// One request to probe a host now.
struct Request {
    name: String,
    /// Asked for from outside (the API, a gateway): rate-limited per host.
    on_demand: bool,
    /// Told when the probe (or the one it joined) has been recorded.
    done: Option<oneshot::Sender<()>>,
}

/// Asks the scheduler to probe hosts now. Cheap to clone.
#[derive(Clone)]
pub struct ProbeRequests {
    tx: mpsc::UnboundedSender<Request>,
}

impl ProbeRequests {
    /// Requests that go nowhere: every `probe_now` answers false at once.
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        let (tx, _) = mpsc::unbounded_channel();
        Self { tx }
    }

    /// A host whose addresses changed, or that is new: probe it as soon as a slot is free.
    pub(crate) fn schedule(&self, name: String) {
        let _ = self.tx.send(Request {
            name,
            on_demand: false,
            done: None,
        });
    }

    /// Probes `name` now — or, when it had an on-demand probe less than
    /// [`ON_DEMAND_MIN_INTERVAL`] ago, once that interval has passed — and does not wait.
    pub fn request(&self, name: &str) {
        let _ = self.tx.send(Request {
            name: name.to_string(),
            on_demand: true,
            done: None,
        });
    }

    /// Like [`ProbeRequests::request`], and resolves once the outcome is in the inventory (at
    /// most `limit`). Returns whether it was.
    pub async fn probe_now(&self, name: &str, limit: Duration) -> bool {
        let (done, recorded) = oneshot::channel();
        let sent = self.tx.send(Request {
            name: name.to_string(),
            on_demand: true,
            done: Some(done),
        });
        sent.is_ok() && matches!(tokio::time::timeout(limit, recorded).await, Ok(Ok(())))
    }
}

/// A host being probed: whether another probe must follow, and who waits for the outcome.
#[derive(Default)]
struct InFlight {
    again: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

pub(crate) struct ProbeScheduler {
    pub inventory: Arc<Inventory>,
    pub metrics: Arc<Metrics>,
    pub tls: Arc<ClientConfig>,
    /// Whether users can walk around the gateway; `None` without `broker.user_ca_files`.
    pub bypass: Option<Arc<BypassChecker>>,
    pub interval: Duration,
    pub timeout: Duration,
    pub limit: Arc<Semaphore>,
    /// Hosts being probed. Requests that come in meanwhile are coalesced into one follow-up
    /// probe instead of being dropped.
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// When each host last got an on-demand probe (the rate limit; scheduled probes do not
    /// count, so a periodic probe a moment before a host changed its key delays nothing).
    on_demand: Mutex<HashMap<String, Instant>>,
    /// On-demand requests held back by the rate limit, with who waits for them.
    deferred: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
}

impl ProbeScheduler {
    pub(crate) fn new(
        inventory: Arc<Inventory>,
        metrics: Arc<Metrics>,
        tls: Arc<ClientConfig>,
        bypass: Option<Arc<BypassChecker>>,
        config: &crate::config::BrokerConfig,
    ) -> Self {
        Self {
            inventory,
            metrics,
            tls,
            bypass,
            interval: config.probe_interval,
            timeout: config.probe_timeout,
            limit: Arc::new(Semaphore::new(config.probe_concurrency.max(1))),
            in_flight: Mutex::new(HashMap::new()),
            on_demand: Mutex::new(HashMap::new()),
            deferred: Mutex::new(HashMap::new()),
        }
    }

    /// The channel that feeds [`ProbeScheduler::run`].
    pub(crate) fn channel() -> (ProbeRequests, ProbeRequestsReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ProbeRequests { tx }, ProbeRequestsReceiver(rx))
    }

    pub(crate) async fn run(
        self,
        mut requests: ProbeRequestsReceiver,
        shutdown: CancellationToken,
    ) {
        let this = Arc::new(self);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                Some(request) = requests.0.recv() => this.clone().take(request, &mut running),
                _ = tick.tick() => {
                    for name in this.inventory.due_for_probe(this.inventory.now(), this.interval) {
                        this.clone().spawn(name, Vec::new(), &mut running);
                    }
                    this.start_deferred(&mut running);
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = shutdown.cancelled() => break,
            }
        }
        running.abort_all();
    }

    /// An explicit request: unknown hosts and (on demand) hosts probed a moment ago are answered
    /// at once with what the inventory has.
    fn take(self: Arc<Self>, request: Request, running: &mut JoinSet<()>) {
        if self.inventory.host(&request.name).is_none() {
            return; // forgotten meanwhile; a waiter sees its sender dropped
        }
        let waiters: Vec<_> = request.done.into_iter().collect();
        if !request.on_demand {
            self.spawn(request.name, waiters, running);
            return;
        }
        let now = Instant::now();
        let recent = {
            let last = self.on_demand.lock().expect("probe times poisoned");
            last.get(&request.name)
                .is_some_and(|t| now.duration_since(*t) < ON_DEMAND_MIN_INTERVAL)
        };
        if recent {
            // Rate-limited, not dropped: one probe follows once the interval has passed, for
            // every request that came in meanwhile (the host may have changed since).
            self.deferred
                .lock()
                .expect("deferred probes poisoned")
                .entry(request.name)
                .or_default()
                .extend(waiters);
            return;
        }
        self.start_on_demand(request.name, waiters, now, running);
    }

    fn start_on_demand(
        self: Arc<Self>,
        name: String,
        waiters: Vec<oneshot::Sender<()>>,
        now: Instant,
        running: &mut JoinSet<()>,
    ) {
        {
            let mut last = self.on_demand.lock().expect("probe times poisoned");
            last.retain(|_, t| now.duration_since(*t) < ON_DEMAND_MIN_INTERVAL);
            last.insert(name.clone(), now);
        }
        info!(host = %name, "probing on request");
        self.spawn(name, waiters, running);
    }

    /// Deferred on-demand probes whose interval has passed.
    fn start_deferred(self: &Arc<Self>, running: &mut JoinSet<()>) {
        let now = Instant::now();
        let due: Vec<(String, Vec<oneshot::Sender<()>>)> = {
            let last = self.on_demand.lock().expect("probe times poisoned");
            let mut deferred = self.deferred.lock().expect("deferred probes poisoned");
            let names: Vec<String> = deferred
                .keys()
                .filter(|n| {
                    last.get(*n)
                        .is_none_or(|t| now.duration_since(*t) >= ON_DEMAND_MIN_INTERVAL)
                })
                .cloned()
                .collect();
            names
                .into_iter()
                .filter_map(|n| deferred.remove_entry(&n))
                .collect()
        };
        for (name, waiters) in due {
            self.clone().start_on_demand(name, waiters, now, running);
        }
    }

    fn spawn(
        self: Arc<Self>,
        name: String,
        waiters: Vec<oneshot::Sender<()>>,
        running: &mut JoinSet<()>,
    ) {
        {
            let mut in_flight = self.in_flight.lock().expect("probe set poisoned");
            if let Some(entry) = in_flight.get_mut(&name) {
                entry.again = true;
                entry.waiters.extend(waiters);
                return;
            }
            in_flight.insert(
                name.clone(),
                InFlight {
                    again: false,
                    waiters,
                },
            );
        }
        running.spawn(async move {
            loop {
                let permit = self.limit.clone().acquire_owned().await;
                self.probe_host(&name).await;
                drop(permit);
                let mut in_flight = self.in_flight.lock().expect("probe set poisoned");
                let entry = in_flight
                    .get_mut(&name)
                    .expect("an entry per running probe");
                if std::mem::take(&mut entry.again) {
                    continue;
                }
                for waiter in in_flight
                    .remove(&name)
                    .map(|e| e.waiters)
                    .unwrap_or_default()
                {
                    let _ = waiter.send(());
                }
                break;
            }
        });
    }

    async fn probe_host(&self, name: &str) {
        let Some(host) = self.inventory.host(name) else {
            return;
        };
        let addresses = if host.addresses.is_empty() {
            resolve(name, host.port).await
        } else {
            // Addresses an announcement added to a pinned host are probed too: that is how
            // they get verified (or not).
            let mut all = host.addresses.clone();
            all.extend(host.pending_addresses.iter().copied());
            Ok(all)
        };
        let mut results: Vec<ProbeResult> = match addresses {
            Ok(addresses) => {
                let probes = addresses
                    .into_iter()
                    .map(|a| probe(self.tls.clone(), a, host.port, self.timeout));
                futures_util::future::join_all(probes).await
            }
            Err(e) => vec![ProbeResult {
                address: IpAddr::from([0, 0, 0, 0]),
                duration: Duration::ZERO,
                outcome: Err(e),
                bypass: None,
            }],
        };
        if let Some(bypass) = &self.bypass {
            bypass
                .check(&host, &mut results, host.port, self.timeout)
                .await;
        }
        for r in &results {
            self.metrics
                .probe_duration
                .observe(r.duration.as_secs_f64());
            if let Err(e) = &r.outcome {
                self.metrics
                    .probe_errors
                    .with_label_values(&[e.reason.as_str()])
                    .inc();
            }
        }
        if let Err(e) = self.inventory.record_probe(name, results) {
            warn!(host = name, error = %e, "could not record probe result");
        }
    }
}

/// The receiving end of [`ProbeRequests`].
pub(crate) struct ProbeRequestsReceiver(mpsc::UnboundedReceiver<Request>);

async fn resolve(name: &str, port: u16) -> Result<Vec<IpAddr>, ProbeError> {
    match tokio::net::lookup_host((name, port)).await {
        Ok(addrs) => {
            let mut v: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            v.sort_by_key(|ip| (ip.is_ipv6(), *ip));
            v.dedup();
            Ok(v)
        }
        Err(e) => Err(ProbeError {
            reason: ProbeErrorReason::Unreachable,
            message: format!(
                "cannot resolve {name}: {e}; list its addresses under [[broker.hosts]]"
            ),
        }),
    }
}
