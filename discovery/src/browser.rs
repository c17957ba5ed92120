//! Watching the LAN for libvirt hosts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
#[allow(clippy::disallowed_types)] // the reader thread blocks on a channel; see `Reader::run`
use std::time::Instant;

use mdns_sd::{Receiver, RecvTimeoutError, ResolvedService, ServiceDaemon, ServiceEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::advertiser::restrict_to_selected_interfaces;
use crate::announcement::txt_map;
use crate::interfaces::{InterfaceConfig, InterfaceSelector};
use crate::{DiscoveryError, DiscoveryEvent, HostAdvert, SERVICE_TYPE};

/// The `[discovery]` configuration section: where to listen and how the browser keeps its
/// view honest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Every this often, every known instance is actively verified (RFC 6762 §10.4), so a host
    /// that died without a goodbye is removed within `verify_interval + verify_timeout` instead
    /// of the 120 s record TTL. `0s` turns periodic verification off.
    #[serde(with = "humantime_serde")]
    pub verify_interval: Duration,
    /// How long a verified instance has to answer before it is removed.
    #[serde(with = "humantime_serde")]
    pub verify_timeout: Duration,
    /// Which interfaces to announce on and browse on.
    pub interfaces: InterfaceConfig,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            interfaces: InterfaceConfig::default(),
            verify_interval: Duration::from_secs(30),
            verify_timeout: Duration::from_secs(2),
        }
    }
}

/// Counters for operators (exported as metrics by the broker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BrowserStats {
    pub appeared: u64,
    pub updated: u64,
    pub removed: u64,
    /// Times the daemon closed our subscription (its 1000-event channel overflowed) and we
    /// subscribed again; the daemon's cache makes the new subscription replay every host.
    pub resubscriptions: u64,
    pub verifications: u64,
}

#[derive(Default)]
struct Counters {
    appeared: AtomicU64,
    updated: AtomicU64,
    removed: AtomicU64,
    resubscriptions: AtomicU64,
    verifications: AtomicU64,
}

type Known = Arc<Mutex<BTreeMap<String, HostAdvert>>>;

/// A running browse of `_libvirt._tcp`. Events arrive in order through [`Browser::next_event`];
/// [`Browser::hosts`] is the current view.
///
/// The mDNS daemon is a thread of its own and talks over a channel of 1000 events that it closes
/// silently when full. A dedicated reader thread therefore drains it without ever blocking on the
/// consumer (events are queued for the consumer instead), and subscribes again if the channel is
/// closed anyway, verifying every known host afterwards so none is kept or lost by mistake.
pub struct Browser {
    daemon: ServiceDaemon,
    events: mpsc::UnboundedReceiver<DiscoveryEvent>,
    known: Known,
    counters: Arc<Counters>,
    stopping: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    verify_timeout: Duration,
}

impl Browser {
    pub fn start(config: &DiscoveryConfig) -> Result<Self, DiscoveryError> {
        let selector = InterfaceSelector::new(&config.interfaces)?;
        let daemon = ServiceDaemon::new()?;
        restrict_to_selected_interfaces(&daemon, &selector)?;
        let rx = daemon.browse(SERVICE_TYPE)?;
        let (tx, events) = mpsc::unbounded_channel();
        let known: Known = Arc::default();
        let counters: Arc<Counters> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            daemon: daemon.clone(),
            tx,
            known: known.clone(),
            counters: counters.clone(),
            stopping: stopping.clone(),
            config: config.clone(),
        };
        let reader = std::thread::Builder::new()
            .name("virtgate-mdns-browse".into())
            .spawn(move || reader.run(rx))
            .map_err(DiscoveryError::Interfaces)?;
        Ok(Self {
            daemon,
            events,
            known,
            counters,
            stopping,
            reader: Some(reader),
            verify_timeout: config.verify_timeout,
        })
    }

    /// The next change, or `None` once the browser has stopped.
    pub async fn next_event(&mut self) -> Option<DiscoveryEvent> {
        self.events.recv().await
    }

    /// Every host currently known, sorted by instance name.
    pub fn hosts(&self) -> Vec<HostAdvert> {
        let known = self.known.lock().expect("browser state poisoned");
        let mut hosts: Vec<HostAdvert> = known.values().cloned().collect();
        hosts.sort_by(|a, b| a.instance.cmp(&b.instance));
        hosts
    }

    /// Asks the LAN whether this instance (instance or full name) is still there; if it does not
    /// answer within the verify timeout, a `Removed` event follows.
    pub fn verify(&self, instance_or_fullname: &str) -> Result<(), DiscoveryError> {
        let fullname = {
            let known = self.known.lock().expect("browser state poisoned");
            known
                .values()
                .find(|h| h.instance == instance_or_fullname || h.fullname == instance_or_fullname)
                .map(|h| h.fullname.clone())
                .unwrap_or_else(|| instance_or_fullname.to_string())
        };
        verify_one(&self.daemon, &self.counters, fullname, self.verify_timeout)
    }

    /// Verifies every known instance; returns how many.
    pub fn verify_all(&self) -> Result<usize, DiscoveryError> {
        verify_known(
            &self.daemon,
            &self.known,
            &self.counters,
            self.verify_timeout,
        )
    }

    pub fn stats(&self) -> BrowserStats {
        let c = &self.counters;
        BrowserStats {
            appeared: c.appeared.load(Ordering::Relaxed),
            updated: c.updated.load(Ordering::Relaxed),
            removed: c.removed.load(Ordering::Relaxed),
            resubscriptions: c.resubscriptions.load(Ordering::Relaxed),
            verifications: c.verifications.load(Ordering::Relaxed),
        }
    }

    /// Stops the daemon and the reader thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Ok(status) = self.daemon.shutdown() {
            let _ = status.recv_timeout(Duration::from_secs(2));
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.reader.is_some() {
            self.stop();
        }
    }
}

struct Reader {
    daemon: ServiceDaemon,
    tx: mpsc::UnboundedSender<DiscoveryEvent>,
    known: Known,
    counters: Arc<Counters>,
    stopping: Arc<AtomicBool>,
    config: DiscoveryConfig,
}

impl Reader {
    // A plain thread blocking on a channel: std's clock is the one it sleeps by.
    #[allow(clippy::disallowed_types)]
    fn run(self, mut rx: Receiver<ServiceEvent>) {
        let periodic = !self.config.verify_interval.is_zero();
        let mut next_verify = Instant::now() + self.config.verify_interval;
        loop {
            let wait = if periodic {
                next_verify.saturating_duration_since(Instant::now())
            } else {
                Duration::from_secs(1)
            };
            match rx.recv_timeout(wait) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {
                    if self.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    if periodic && Instant::now() >= next_verify {
                        next_verify = Instant::now() + self.config.verify_interval;
                        self.verify_all("periodic");
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if self.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    match self.resubscribe() {
                        Some(new_rx) => rx = new_rx,
                        None => return,
                    }
                }
            }
            if self.tx.is_closed() {
                return;
            }
        }
    }

    fn handle(&self, event: ServiceEvent) {
        match event {
            ServiceEvent::ServiceResolved(service) => {
                if let Some(advert) = advert_from(&service) {
                    self.upsert(advert);
                }
            }
            ServiceEvent::ServiceRemoved(_ty, fullname) => self.remove(&fullname),
            other => debug!(event = ?other, "mDNS browse event"),
        }
    }

    fn upsert(&self, advert: HostAdvert) {
        let event = {
            let mut known = self.known.lock().expect("browser state poisoned");
            match known.insert(advert.fullname.clone(), advert.clone()) {
                None => {
                    self.counters.appeared.fetch_add(1, Ordering::Relaxed);
                    DiscoveryEvent::Appeared(advert)
                }
                Some(previous) if previous != advert => {
                    self.counters.updated.fetch_add(1, Ordering::Relaxed);
                    DiscoveryEvent::Updated(advert)
                }
                Some(_) => return,
            }
        };
        debug!(
            kind = event.kind(),
            instance = event.instance(),
            "discovery event"
        );
        let _ = self.tx.send(event);
    }

    fn remove(&self, fullname: &str) {
        let removed = self
            .known
            .lock()
            .expect("browser state poisoned")
            .remove(fullname);
        if let Some(host) = removed {
            self.counters.removed.fetch_add(1, Ordering::Relaxed);
            debug!(instance = %host.instance, "discovery event removed");
            let _ = self.tx.send(DiscoveryEvent::Removed {
                instance: host.instance,
                fullname: host.fullname,
            });
        }
    }

    fn resubscribe(&self) -> Option<Receiver<ServiceEvent>> {
        self.counters
            .resubscriptions
            .fetch_add(1, Ordering::Relaxed);
        warn!("mDNS daemon closed the browse subscription (event backlog overflow); subscribing again");
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.daemon.browse(SERVICE_TYPE) {
                Ok(rx) => {
                    self.verify_all("resubscribed");
                    return Some(rx);
                }
                Err(mdns_sd::Error::Again) if !self.stopping.load(Ordering::SeqCst) => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    if !self.stopping.load(Ordering::SeqCst) {
                        warn!(error = %e, "mDNS daemon gone; browsing stopped");
                    }
                    return None;
                }
            }
        }
    }

    fn verify_all(&self, why: &str) {
        match verify_known(
            &self.daemon,
            &self.known,
            &self.counters,
            self.config.verify_timeout,
        ) {
            Ok(n) if n > 0 => debug!(count = n, why, "verifying known hosts"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, why, "could not verify known hosts"),
        }
    }
}

fn verify_known(
    daemon: &ServiceDaemon,
    known: &Known,
    counters: &Counters,
    timeout: Duration,
) -> Result<usize, DiscoveryError> {
    let fullnames: Vec<String> = known
        .lock()
        .expect("browser state poisoned")
        .keys()
        .cloned()
        .collect();
    for fullname in &fullnames {
        verify_one(daemon, counters, fullname.clone(), timeout)?;
    }
    Ok(fullnames.len())
}

fn verify_one(
    daemon: &ServiceDaemon,
    counters: &Counters,
    fullname: String,
    timeout: Duration,
) -> Result<(), DiscoveryError> {
    let mut attempts = 0;
    loop {
        match daemon.verify(fullname.clone(), timeout) {
            Ok(()) => {
                counters.verifications.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(mdns_sd::Error::Again) if attempts < 1000 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn advert_from(service: &ResolvedService) -> Option<HostAdvert> {
    if service.ty_domain != SERVICE_TYPE {
        return None;
    }
    let advert = HostAdvert::from_announcement(
        &service.fullname,
        &service.host,
        service.port,
        service.addresses.iter().map(|a| a.to_ip_addr()),
        txt_map(&service.txt_properties),
    );
    if advert.is_none() {
        debug!(fullname = %service.fullname, "ignoring announcement with an empty instance name or no usable address");
    }
    advert
}
