//! The inventory: every host, what it presents, what is wrong with it, and whether it is trusted.
//!
//! A thin shell around pure decisions. Every change goes through one path, [`Writer::commit`]:
//! take the writer lock, write the store (one transaction), update the in-memory copy, bump the
//! revision that watchers (HTTP long-poll, metrics, proxies) follow. Readers take only the
//! in-memory lock, whose critical sections are a map lookup or clone — never SQLite — so a slow
//! disk delays writers, not readers. The decisions themselves are pure functions of the previous
//! record, the input and the time ([`announce`], [`probe`], [`trust`]); the clock is injected.

mod announce;
mod enrolled;
mod probe;
mod trust;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};
use virtgate_api::{CertificateHistoryEntry, Event, EventKind, FindingKind, Host, HostSource, Pin};
use virtgate_discovery::{DiscoveryEvent, HostAdvert};

use crate::cert::Windows;
use crate::config::{FirstSight, StaticHost};
use crate::probe::ProbeResult;
use crate::store::{Store, StoreError};
use crate::tls::TrustAnchors;

/// How findings and trust are decided.
pub struct TrustPolicy {
    pub windows: Windows,
    pub first_sight: FirstSight,
    pub anchors: TrustAnchors,
}

/// Where the inventory reads the time: Unix seconds.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> i64;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("no host named {0:?} in the inventory; `virtgate hosts` lists them")]
    UnknownHost(String),
    #[error(
        "host {host} presents no certificate yet; wait for a successful probe before approving"
    )]
    NothingPresented { host: String },
    #[error("pin {given} does not match the key host {host} presents now ({presented}); check the host, then approve the presented pin")]
    PinMismatch {
        host: String,
        given: Pin,
        presented: Pin,
    },
    #[error("host {0} is a virtgate agent: its key is trusted by enrollment, not by approval; run `virtgate enroll {0}` and the command it prints on the host")]
    AgentHost(String),
    #[error("{0:?} is not a SPKI SHA-256 pin: expected 64 hex digits (or sha256:HEX, pin-sha256:BASE64)")]
    BadPin(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An event about to be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewEvent {
    pub at: i64,
    pub kind: EventKind,
    pub detail: String,
}

impl NewEvent {
    pub(crate) fn new(at: i64, kind: EventKind, detail: impl Into<String>) -> Self {
        Self {
            at,
            kind,
            detail: detail.into(),
        }
    }
}

/// One change to the inventory, committed as a unit.
pub(crate) enum Change {
    /// The host's new record, the certificates it presents now (SHA-256, DER), and events.
    Save {
        host: Box<Host>,
        ders: Vec<(String, Vec<u8>)>,
        events: Vec<NewEvent>,
    },
    /// The host, its certificate history and its series go; the log keeps one event.
    Forget { name: String, event: NewEvent },
}

pub struct Inventory {
    /// The read model. Held only for lookups and clones.
    hosts: Mutex<BTreeMap<String, Host>>,
    /// The writer lock: one change at a time, in order, each written before it is visible.
    store: Mutex<Store>,
    policy: TrustPolicy,
    clock: Arc<dyn Clock>,
    revision: watch::Sender<u64>,
}

/// A change in progress: holds the writer lock.
struct Writer<'a> {
    inventory: &'a Inventory,
    store: MutexGuard<'a, Store>,
    now: i64,
}

impl Writer<'_> {
    fn get(&self, name: &str) -> Option<Host> {
        self.inventory.read().get(name).cloned()
    }

    /// The one commit path: store, then memory, then the revision. Returns whether anything
    /// changed.
    fn commit(&mut self, change: Change) -> Result<bool, InventoryError> {
        match change {
            Change::Save { host, ders, events } => {
                self.store.save(&host, &ders, &events)?;
                log_events(&host.name, &events);
                self.inventory.read().insert(host.name.clone(), *host);
            }
            Change::Forget { name, event } => {
                let stored = self.store.forget(&name, &event)?;
                let held = self.inventory.read().remove(&name).is_some();
                if !(stored || held) {
                    return Ok(false);
                }
                log_events(&name, std::slice::from_ref(&event));
            }
        }
        self.inventory.revision.send_modify(|r| *r += 1);
        Ok(true)
    }
}

fn log_events(host: &str, events: &[NewEvent]) {
    for e in events {
        if e.kind.is_alarm() {
            warn!(host, event = e.kind.as_str(), "{}", e.detail);
        } else {
            info!(host, event = e.kind.as_str(), "{}", e.detail);
        }
    }
}

impl Inventory {
    pub(crate) fn open(
        store: Store,
        policy: TrustPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, InventoryError> {
        let hosts = store
            .load_hosts()?
            .into_iter()
            .map(|h| (h.name.clone(), h))
            .collect();
        let (revision, _) = watch::channel(1);
        Ok(Self {
            hosts: Mutex::new(hosts),
            store: Mutex::new(store),
            policy,
            clock,
            revision,
        })
    }

    /// The in-memory copy. A std mutex: the critical sections are a lookup or a clone.
    fn read(&self) -> MutexGuard<'_, BTreeMap<String, Host>> {
        self.hosts.lock().expect("inventory lock poisoned")
    }

    fn writer(&self) -> Writer<'_> {
        let store = self.store.lock().expect("inventory store lock poisoned");
        Writer {
            inventory: self,
            store,
            now: self.clock.now(),
        }
    }

    /// The expiry windows findings are decided with.
    pub fn windows(&self) -> Windows {
        self.policy.windows
    }

    /// The inventory's clock, for callers that compare against the records' times.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Follows changes: the value is a revision number that grows with every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    pub fn hosts(&self) -> Vec<Host> {
        self.read().values().cloned().collect()
    }

    /// Every host with the revision they belong to, read together.
    pub fn snapshot(&self) -> (u64, Vec<Host>) {
        let hosts = self.read();
        let revision = *self.revision.borrow();
        (revision, hosts.values().cloned().collect())
    }

    pub fn host(&self, name: &str) -> Option<Host> {
        self.read().get(name).cloned()
    }

    pub fn events(
        &self,
        host: Option<&str>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Event>, InventoryError> {
        let store = self.store.lock().expect("inventory store lock poisoned");
        Ok(store.events(host, after_id, limit)?)
    }

    pub fn certificate_history(
        &self,
        host: &str,
    ) -> Result<Vec<CertificateHistoryEntry>, InventoryError> {
        let store = self.store.lock().expect("inventory store lock poisoned");
        Ok(store.certificate_history(host)?)
    }

    /// Adds or refreshes a configured host; returns its name if it needs a probe now.
    pub fn upsert_static(&self, config: &StaticHost) -> Result<Option<String>, InventoryError> {
        let mut w = self.writer();
        let key = announce::host_key(&config.name);
        let previous = w.get(&key);
        let Some((host, events)) = announce::configured(previous.as_ref(), config, w.now) else {
            return Ok(None);
        };
        let ders = Vec::new();
        w.commit(Change::Save {
            host: Box::new(host),
            ders,
            events,
        })?;
        Ok(Some(key))
    }

    /// Applies an mDNS event; returns the host's name if it needs a probe now.
    pub fn discovered(&self, event: &DiscoveryEvent) -> Result<Option<String>, InventoryError> {
        let mut w = self.writer();
        match event {
            DiscoveryEvent::Appeared(ad) | DiscoveryEvent::Updated(ad) => {
                let name = ad.short_hostname().to_ascii_lowercase();
                if name.is_empty() {
                    return Ok(None);
                }
                let previous = w.get(&name);
                let (host, events, needs_probe) =
                    announce::announced(previous.as_ref(), &name, ad, w.now);
                let ders = Vec::new();
                w.commit(Change::Save {
                    host: Box::new(host),
                    ders,
                    events,
                })?;
                Ok(needs_probe.then_some(name))
            }
            DiscoveryEvent::Removed { instance, .. } => {
                let found = self
                    .read()
                    .values()
                    .find(|h| {
                        h.source == HostSource::Mdns
                            && h.instance.as_deref() == Some(instance.as_str())
                    })
                    .cloned();
                let Some(previous) = found else {
                    return Ok(None);
                };
                let (host, events) = announce::withdrawn(&previous, instance, w.now);
                let ders = Vec::new();
                w.commit(Change::Save {
                    host: Box::new(host),
                    ders,
                    events,
                })?;
                Ok(None)
            }
        }
    }

    /// Hosts announced on the LAN now that the inventory lacks (an operator forgot them) are
    /// added again, as new; returns their names, to be probed.
    pub fn restore_announced<'a>(
        &self,
        announced: impl IntoIterator<Item = &'a HostAdvert>,
    ) -> Vec<String> {
        let missing: Vec<&HostAdvert> = {
            let hosts = self.read();
            announced
                .into_iter()
                .filter(|ad| {
                    let name = ad.short_hostname().to_ascii_lowercase();
                    !name.is_empty() && !hosts.contains_key(&name)
                })
                .collect()
        };
        let mut restored = Vec::new();
        for ad in missing {
            match self.discovered(&DiscoveryEvent::Appeared(ad.clone())) {
                Ok(Some(name)) => restored.push(name),
                Ok(None) => {}
                Err(e) => warn!(error = %e, "could not add an announced host again"),
            }
        }
        restored
    }

    /// Hosts whose last probe is older than `interval` (or never probed), absent ones excepted.
    /// A host with a failing address is retried sooner: 5 s, 10 s, 20 s, … up to `interval`.
    pub fn due_for_probe(&self, now: i64, interval: Duration) -> Vec<String> {
        let interval = interval.as_secs() as i64;
        self.read()
            .values()
            .filter(|h| h.state != virtgate_api::HostState::Absent)
            .filter(|h| {
                let wait = match h.failed_probes {
                    0 => interval,
                    n => (5i64 << (n - 1).min(16)).min(interval),
                };
                h.last_probe.is_none_or(|t| now - t >= wait)
            })
            .map(|h| h.name.clone())
            .collect()
    }

    /// Records the outcome of probing every address of a host, and decides findings and trust.
    pub fn record_probe(
        &self,
        name: &str,
        results: Vec<ProbeResult>,
    ) -> Result<(), InventoryError> {
        let mut w = self.writer();
        let Some(previous) = w.get(name) else {
            return Ok(()); // forgotten while the probe ran
        };
        let change = probe::fold(&previous, results, w.now, &self.policy);
        w.commit(change).map(drop)
    }

    /// Approves the key a host presents now. `pin` must match it: approving blind is refused.
    pub fn approve(&self, name: &str, pin: &str) -> Result<Host, InventoryError> {
        let pin: Pin = pin
            .parse()
            .map_err(|_| InventoryError::BadPin(pin.trim().to_string()))?;
        let mut w = self.writer();
        let mut host = w
            .get(name)
            .ok_or_else(|| InventoryError::UnknownHost(name.into()))?;
        if host.agent || trust::announces_agent(&host) {
            return Err(InventoryError::AgentHost(name.into()));
        }
        let presented = host
            .presented_pin
            .ok_or_else(|| InventoryError::NothingPresented { host: name.into() })?;
        if presented != pin {
            return Err(InventoryError::PinMismatch {
                host: name.into(),
                given: pin,
                presented,
            });
        }
        if host.pin == Some(pin) && host.trust.is_trusted() {
            return Ok(host); // approved already: nothing changes, nothing is logged again
        }
        host.pin = Some(pin);
        if host.trust != virtgate_api::TrustState::TrustedCa {
            host.trust = virtgate_api::TrustState::Pinned;
        }
        host.trust_detail = "presented key matches the approved pin".into();
        host.findings.retain(|f| f.kind != FindingKind::Changed);
        let detail = format!("pin {pin} approved by an operator");
        let events = vec![NewEvent::new(w.now, EventKind::Approved, detail)];
        let ders = Vec::new();
        w.commit(Change::Save {
            host: Box::new(host.clone()),
            ders,
            events,
        })?;
        Ok(host)
    }

    /// Removes a host, its certificate history and its series. Returns whether it existed.
    pub fn forget(&self, name: &str, why: &str, kind: EventKind) -> Result<bool, InventoryError> {
        let mut w = self.writer();
        let event = NewEvent::new(w.now, kind, why);
        w.commit(Change::Forget {
            name: name.to_string(),
            event,
        })
    }

    /// Mdns hosts unseen for longer than `retention`; static hosts stay while configured.
    pub fn unseen_longer_than(&self, now: i64, retention: Duration) -> Vec<String> {
        self.read()
            .values()
            .filter(|h| {
                h.source == HostSource::Mdns && now - h.last_seen > retention.as_secs() as i64
            })
            .map(|h| h.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtgate_api::HostState;

    fn inventory(dir: &std::path::Path) -> Inventory {
        let policy = TrustPolicy {
            windows: Windows {
                warning: Duration::from_secs(30 * 86400),
                critical: Duration::from_secs(7 * 86400),
            },
            first_sight: FirstSight::Approve,
            anchors: TrustAnchors::none(),
        };
        let store = Store::open(&dir.join("i.sqlite")).unwrap();
        Inventory::open(store, policy, Arc::new(SystemClock)).unwrap()
    }

    fn advert(host: &str, addresses: &[&str]) -> HostAdvert {
        HostAdvert {
            instance: format!("Virtualization Host {host}"),
            fullname: format!("Virtualization Host {host}._libvirt._tcp.local."),
            hostname: format!("{host}.local."),
            port: 16514,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            txt: Default::default(),
        }
    }

    #[test]
    fn discovery_events_create_update_and_mark_hosts_absent() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        assert_eq!(
            inv.discovered(&DiscoveryEvent::Appeared(advert("h1", &["10.0.0.1"])))
                .unwrap()
                .as_deref(),
            Some("h1")
        );
        let again = inv
            .discovered(&DiscoveryEvent::Updated(advert(
                "h1",
                &["10.0.0.1", "fd00::1"],
            )))
            .unwrap();
        assert_eq!(again.as_deref(), Some("h1"), "new addresses need a probe");
        let same = inv
            .discovered(&DiscoveryEvent::Updated(advert(
                "h1",
                &["10.0.0.1", "fd00::1"],
            )))
            .unwrap();
        assert_eq!(same, None, "nothing changed, no probe");
        inv.discovered(&DiscoveryEvent::Removed {
            instance: "Virtualization Host h1".into(),
            fullname: "Virtualization Host h1._libvirt._tcp.local.".into(),
        })
        .unwrap();
        let host = inv.host("h1").unwrap();
        assert_eq!(host.state, HostState::Absent);
        assert_eq!(host.addresses.len(), 2);
        let kinds: Vec<EventKind> = inv
            .events(Some("h1"), 0, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, vec![EventKind::Appeared, EventKind::Removed]);
        assert!(
            inv.due_for_probe(SystemClock.now(), Duration::ZERO)
                .is_empty(),
            "absent hosts are not probed"
        );
    }

    #[test]
    fn failing_hosts_are_retried_with_backoff_and_healthy_ones_at_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        inv.upsert_static(&StaticHost {
            name: "h".into(),
            addresses: vec!["127.0.0.1".parse().unwrap()],
            port: 1,
        })
        .unwrap();
        let refused = || ProbeResult {
            address: "127.0.0.1".parse().unwrap(),
            duration: Duration::from_millis(1),
            outcome: Err(crate::probe::ProbeError {
                reason: crate::probe::ProbeErrorReason::Refused,
                message: "refused".into(),
            }),
            bypass: None,
        };
        let interval = Duration::from_secs(600);
        inv.record_probe("h", vec![refused()]).unwrap();
        let t = inv.host("h").unwrap().last_probe.unwrap();
        assert!(inv.due_for_probe(t + 4, interval).is_empty());
        assert_eq!(
            inv.due_for_probe(t + 5, interval),
            vec!["h".to_string()],
            "first retry after 5 s"
        );
        inv.record_probe("h", vec![refused()]).unwrap();
        let t = inv.host("h").unwrap().last_probe.unwrap();
        assert!(inv.due_for_probe(t + 9, interval).is_empty());
        assert_eq!(inv.due_for_probe(t + 10, interval).len(), 1, "then 10 s");
        for _ in 0..20 {
            inv.record_probe("h", vec![refused()]).unwrap();
        }
        let t = inv.host("h").unwrap().last_probe.unwrap();
        assert!(
            inv.due_for_probe(t + 599, interval).is_empty(),
            "never slower than the interval"
        );
        assert_eq!(inv.due_for_probe(t + 600, interval).len(), 1);
    }

    #[test]
    fn a_forgotten_host_that_still_announces_itself_comes_back_as_new() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        let key = rcgen::KeyPair::generate().unwrap();
        let ad = advert("h1", &["10.0.0.1"]);
        inv.discovered(&DiscoveryEvent::Appeared(ad.clone()))
            .unwrap();
        inv.record_probe("h1", vec![presented("10.0.0.1", &key)])
            .unwrap();
        let pin = inv.host("h1").unwrap().presented_pin.unwrap().to_string();
        inv.approve("h1", &pin).unwrap();
        assert!(
            inv.restore_announced([&ad]).is_empty(),
            "a host in the inventory is left alone"
        );

        inv.forget("h1", "by an operator", EventKind::Forgotten)
            .unwrap();
        assert!(inv.host("h1").is_none());
        // The browser reports an instance once; the broker remembers it is still announced.
        assert_eq!(inv.restore_announced([&ad]), vec!["h1".to_string()]);
        let back = inv.host("h1").unwrap();
        assert_eq!(back.pin, None, "its pin went with the forget");
        assert_eq!(back.addresses, ad.addresses);
    }

    #[test]
    fn approving_the_approved_key_again_logs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        let key = rcgen::KeyPair::generate().unwrap();
        inv.discovered(&DiscoveryEvent::Appeared(advert("h1", &["10.0.0.1"])))
            .unwrap();
        inv.record_probe("h1", vec![presented("10.0.0.1", &key)])
            .unwrap();
        let pin = inv.host("h1").unwrap().presented_pin.unwrap().to_string();
        for _ in 0..3 {
            inv.approve("h1", &pin).unwrap();
        }
        let approvals = inv
            .events(Some("h1"), 0, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EventKind::Approved)
            .count();
        assert_eq!(approvals, 1);
    }

    #[test]
    fn only_discovered_hosts_expire_after_the_retention_period() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        inv.discovered(&DiscoveryEvent::Appeared(advert("lan", &["10.0.0.1"])))
            .unwrap();
        inv.upsert_static(&StaticHost {
            name: "far".into(),
            addresses: vec![],
            port: 16514,
        })
        .unwrap();
        let later = SystemClock.now() + 15 * 86400;
        assert_eq!(
            inv.unseen_longer_than(later, Duration::from_secs(14 * 86400)),
            vec!["lan".to_string()]
        );
        assert!(inv
            .unseen_longer_than(SystemClock.now(), Duration::from_secs(14 * 86400))
            .is_empty());
    }

    struct FixedClock(i64);
    impl Clock for FixedClock {
        fn now(&self) -> i64 {
            self.0
        }
    }

    #[test]
    fn the_inventory_reads_time_from_its_clock() {
        let dir = tempfile::tempdir().unwrap();
        let policy = TrustPolicy {
            windows: Windows {
                warning: Duration::from_secs(30 * 86400),
                critical: Duration::from_secs(7 * 86400),
            },
            first_sight: FirstSight::Approve,
            anchors: TrustAnchors::none(),
        };
        let store = Store::open(&dir.path().join("i.sqlite")).unwrap();
        let inv = Inventory::open(store, policy, Arc::new(FixedClock(1_000_000))).unwrap();
        inv.discovered(&DiscoveryEvent::Appeared(advert("h1", &["10.0.0.1"])))
            .unwrap();
        let host = inv.host("h1").unwrap();
        assert_eq!((host.first_seen, host.last_seen), (1_000_000, 1_000_000));
        assert_eq!(inv.events(Some("h1"), 0, 1).unwrap()[0].at, 1_000_000);
    }

    #[test]
    fn readers_are_not_held_up_by_a_writer_at_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        inv.discovered(&DiscoveryEvent::Appeared(advert("h1", &["10.0.0.1"])))
            .unwrap();
        // A writer stuck in SQLite holds the store lock; lookups must still answer.
        let _writer = inv.store.lock().unwrap();
        assert!(inv.host("h1").is_some());
        assert_eq!(inv.hosts().len(), 1);
        assert_eq!(inv.snapshot().1.len(), 1);
    }

    #[test]
    fn static_host_names_are_keys_in_lower_case_without_a_trailing_dot() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        let name = inv
            .upsert_static(&StaticHost {
                name: "H7.Example.COM.".into(),
                addresses: vec![],
                port: 16514,
            })
            .unwrap();
        assert_eq!(name.as_deref(), Some("h7.example.com"));
        assert!(inv.host("h7.example.com").is_some());
        let again = inv
            .upsert_static(&StaticHost {
                name: "h7.example.com".into(),
                addresses: vec![],
                port: 16514,
            })
            .unwrap();
        assert_eq!(again, None, "the same host, unchanged");
        assert_eq!(inv.hosts().len(), 1);
    }

    /// A certificate for `key`, as a host presents it.
    fn presented(address: &str, key: &rcgen::KeyPair) -> ProbeResult {
        let mut params = rcgen::CertificateParams::new(vec!["h1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "h1");
        let der = params.self_signed(key).unwrap().der().clone();
        ProbeResult {
            address: address.parse().unwrap(),
            duration: Duration::from_millis(1),
            outcome: Ok(crate::probe::Presented {
                chain: vec![der],
                tls_version: "TLSv1_3".into(),
                auth: None,
            }),
            bypass: None,
        }
    }

    #[test]
    fn an_announcement_never_re_points_a_pinned_host_to_an_address_without_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        let (genuine, attacker) = (
            rcgen::KeyPair::generate().unwrap(),
            rcgen::KeyPair::generate().unwrap(),
        );
        inv.discovered(&DiscoveryEvent::Appeared(advert("h1", &["10.0.0.1"])))
            .unwrap();
        inv.record_probe("h1", vec![presented("10.0.0.1", &genuine)])
            .unwrap();
        let pin = inv.host("h1").unwrap().presented_pin.unwrap().to_string();
        inv.approve("h1", &pin).unwrap();

        // Someone announces h1 at another address, where another key answers.
        let again = inv
            .discovered(&DiscoveryEvent::Updated(advert("h1", &["10.0.0.66"])))
            .unwrap();
        assert_eq!(again.as_deref(), Some("h1"), "the new address is probed");
        let host = inv.host("h1").unwrap();
        assert_eq!(
            host.addresses,
            vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(
            host.pending_addresses,
            vec!["10.0.0.66".parse::<std::net::IpAddr>().unwrap()]
        );
        inv.record_probe(
            "h1",
            vec![
                presented("10.0.0.1", &genuine),
                presented("10.0.0.66", &attacker),
            ],
        )
        .unwrap();
        let host = inv.host("h1").unwrap();
        assert_eq!(
            host.trust,
            virtgate_api::TrustState::Pinned,
            "not re-keyed by the stranger"
        );
        assert_eq!(
            host.addresses,
            vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );

        // The host really moved: its pinned key answers at the new address, which is adopted.
        inv.record_probe("h1", vec![presented("10.0.0.66", &genuine)])
            .unwrap();
        let host = inv.host("h1").unwrap();
        assert!(
            host.addresses.contains(&"10.0.0.66".parse().unwrap()),
            "{:?}",
            host.addresses
        );
        assert!(host.pending_addresses.is_empty());
        assert_eq!(host.trust, virtgate_api::TrustState::Pinned);
    }
}
