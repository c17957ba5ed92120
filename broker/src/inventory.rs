//! The inventory: every host, what it presents, what is wrong with it, and whether it is trusted.
//!
//! All changes go through here, are written to the store in the same step (one transaction per
//! change), and bump a revision that watchers (HTTP long-poll, metrics, the proxy) follow.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;
use tracing::{info, warn};
use virtgate_discovery::DiscoveryEvent;

use crate::cert::{
    certificate_findings, name_finding, parse_certificate, Finding, FindingKind, Windows,
};
use crate::config::{FirstSight, StaticHost};
use crate::model::{CertificateRow, Endpoint, Event, Host, HostSource, HostState, TrustState};
use crate::probe::{ProbeErrorReason, ProbeResult};
use crate::store::{Store, StoreError};
use crate::tls::{ChainVerdict, TrustAnchors};

/// How findings and trust are decided.
pub struct Policy {
    pub windows: Windows,
    pub first_sight: FirstSight,
    pub anchors: TrustAnchors,
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
        given: String,
        presented: String,
    },
    #[error("{0:?} is not a SPKI SHA-256 pin: expected 64 hex digits")]
    BadPin(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Inner {
    hosts: BTreeMap<String, Host>,
    store: Store,
}

pub struct Inventory {
    inner: Mutex<Inner>,
    policy: Policy,
    revision: watch::Sender<u64>,
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Inventory {
    pub fn open(store: Store, policy: Policy) -> Result<Self, InventoryError> {
        let hosts = store
            .load_hosts()?
            .into_iter()
            .map(|h| (h.name.clone(), h))
            .collect();
        let (revision, _) = watch::channel(1);
        Ok(Self {
            inner: Mutex::new(Inner { hosts, store }),
            policy,
            revision,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("inventory lock poisoned")
    }

    fn bump(&self) {
        self.revision.send_modify(|r| *r += 1);
    }

    /// Follows changes: the value is a revision number that grows with every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    pub fn hosts(&self) -> Vec<Host> {
        self.lock().hosts.values().cloned().collect()
    }

    pub fn host(&self, name: &str) -> Option<Host> {
        self.lock().hosts.get(name).cloned()
    }

    pub fn events(
        &self,
        host: Option<&str>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Event>, InventoryError> {
        Ok(self.lock().store.events(host, after_id, limit)?)
    }

    pub fn certificate_history(
        &self,
        host: &str,
    ) -> Result<Vec<(String, crate::cert::CertInfo, i64, i64)>, InventoryError> {
        Ok(self.lock().store.certificate_history(host)?)
    }

    /// Adds or refreshes a configured host; returns its name if it needs a probe now.
    pub fn upsert_static(&self, config: &StaticHost) -> Result<Option<String>, InventoryError> {
        let now = now_unix();
        let mut inner = self.lock();
        let (host, is_new) = match inner.hosts.get(&config.name) {
            Some(existing) => {
                let mut h = existing.clone();
                let changed = h.addresses != config.addresses
                    || h.port != config.port
                    || h.source != HostSource::Static;
                h.source = HostSource::Static;
                h.addresses = config.addresses.clone();
                h.port = config.port;
                if !changed {
                    return Ok(None);
                }
                (h, false)
            }
            None => (
                Host::new(
                    &config.name,
                    HostSource::Static,
                    config.port,
                    config.addresses.clone(),
                    now,
                ),
                true,
            ),
        };
        let events = if is_new {
            vec![(
                now,
                "appeared".to_string(),
                "configured as a static host".to_string(),
            )]
        } else {
            vec![]
        };
        inner.store.save(&host, &[], &events)?;
        inner.hosts.insert(host.name.clone(), host);
        drop(inner);
        self.bump();
        Ok(Some(config.name.clone()))
    }

    /// Applies an mDNS event; returns the host's name if it needs a probe now.
    pub fn discovered(&self, event: &DiscoveryEvent) -> Result<Option<String>, InventoryError> {
        let now = now_unix();
        let mut inner = self.lock();
        match event {
            DiscoveryEvent::Appeared(ad) | DiscoveryEvent::Updated(ad) => {
                let name = ad.short_hostname().to_ascii_lowercase();
                if name.is_empty() {
                    return Ok(None);
                }
                let mut events = Vec::new();
                let (mut host, needs_probe) = match inner.hosts.get(&name) {
                    Some(existing) if existing.source == HostSource::Static => {
                        // Configuration is authoritative for addresses and port of static hosts.
                        let mut h = existing.clone();
                        h.instance = Some(ad.instance.clone());
                        h.txt = ad.txt.clone();
                        (h, false)
                    }
                    Some(existing) => {
                        let mut h = existing.clone();
                        let returned = h.state == HostState::Absent;
                        let moved = h.addresses != ad.addresses || h.port != ad.port;
                        if returned {
                            h.state = HostState::Unknown;
                            events.push((
                                now,
                                "appeared".to_string(),
                                format!("announced again as {:?}", ad.instance),
                            ));
                        }
                        h.addresses = ad.addresses.clone();
                        h.port = ad.port;
                        h.instance = Some(ad.instance.clone());
                        h.txt = ad.txt.clone();
                        (h, returned || moved)
                    }
                    None => {
                        let mut h =
                            Host::new(&name, HostSource::Mdns, ad.port, ad.addresses.clone(), now);
                        h.instance = Some(ad.instance.clone());
                        h.txt = ad.txt.clone();
                        events.push((
                            now,
                            "appeared".to_string(),
                            format!("announced as {:?} on {}", ad.instance, join(&ad.addresses)),
                        ));
                        (h, true)
                    }
                };
                host.last_seen = now;
                inner.store.save(&host, &[], &events)?;
                inner.hosts.insert(name.clone(), host);
                drop(inner);
                self.bump();
                Ok(needs_probe.then_some(name))
            }
            DiscoveryEvent::Removed { instance, .. } => {
                let Some(mut host) = inner
                    .hosts
                    .values()
                    .find(|h| {
                        h.source == HostSource::Mdns
                            && h.instance.as_deref() == Some(instance.as_str())
                    })
                    .cloned()
                else {
                    return Ok(None);
                };
                host.state = HostState::Absent;
                let events = [(
                    now,
                    "removed".to_string(),
                    format!("{instance:?} is no longer announced"),
                )];
                inner.store.save(&host, &[], &events)?;
                inner.hosts.insert(host.name.clone(), host);
                drop(inner);
                self.bump();
                Ok(None)
            }
        }
    }

    /// Hosts whose last probe is older than `interval` (or never probed), absent ones excepted.
    /// A host with a failing address is retried sooner: 5 s, 10 s, 20 s, … up to `interval`.
    pub fn due_for_probe(&self, now: i64, interval: Duration) -> Vec<String> {
        let interval = interval.as_secs() as i64;
        self.lock()
            .hosts
            .values()
            .filter(|h| h.state != HostState::Absent)
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
        let now = now_unix();
        let mut inner = self.lock();
        let Some(previous) = inner.hosts.get(name).cloned() else {
            return Ok(()); // forgotten while the probe ran
        };
        let mut host = previous.clone();
        let mut events: Vec<(i64, String, String)> = Vec::new();
        let mut ders: Vec<(String, Vec<u8>)> = Vec::new();
        let mut first_chain: Option<Vec<CertificateDer<'static>>> = None;

        host.last_probe = Some(now);
        host.endpoints = results
            .into_iter()
            .map(|r| {
                let mut endpoint = Endpoint {
                    address: r.address,
                    probed_at: now,
                    duration_ms: r.duration.as_secs_f64() * 1000.0,
                    error: None,
                    error_reason: None,
                    tls_version: None,
                    chain: Vec::new(),
                };
                match r.outcome {
                    Ok(presented) => {
                        let parsed: Result<Vec<_>, _> = presented
                            .chain
                            .iter()
                            .enumerate()
                            .map(|(i, der)| parse_certificate(der, i))
                            .collect();
                        match parsed {
                            Ok(chain) => {
                                for (info, der) in chain.iter().zip(&presented.chain) {
                                    ders.push((info.sha256.clone(), der.to_vec()));
                                }
                                endpoint.chain = chain;
                                endpoint.tls_version = Some(presented.tls_version);
                                first_chain.get_or_insert(presented.chain);
                            }
                            Err(e) => {
                                endpoint.error = Some(e.to_string());
                                endpoint.error_reason = Some(ProbeErrorReason::Other);
                            }
                        }
                    }
                    Err(e) => {
                        endpoint.error = Some(e.message);
                        endpoint.error_reason = Some(e.reason);
                        // Keep what this address presented last time so expiry stays visible while it is down.
                        if let Some(old) =
                            previous.endpoints.iter().find(|o| o.address == r.address)
                        {
                            endpoint.chain = old.chain.clone();
                        }
                    }
                }
                endpoint
            })
            .collect();

        let reachable = host.endpoints.iter().any(|e| e.error.is_none());
        let any_failed =
            host.endpoints.is_empty() || host.endpoints.iter().any(|e| e.error.is_some());
        host.failed_probes = if any_failed {
            previous.failed_probes.saturating_add(1)
        } else {
            0
        };
        host.state = if reachable {
            HostState::Up
        } else {
            HostState::Down
        };
        if reachable {
            host.last_seen = now;
        }
        if !reachable && previous.state != HostState::Down {
            let errors: Vec<String> = host
                .endpoints
                .iter()
                .filter_map(|e| e.error.clone())
                .collect();
            let detail = if errors.is_empty() {
                "no address to probe".to_string()
            } else {
                errors.join("; ")
            };
            events.push((now, "probe_failed".into(), detail));
        }
        if reachable && previous.state == HostState::Down {
            events.push((now, "probe_recovered".into(), "reachable again".into()));
        }

        if let Some(chain) = first_chain {
            let leaf = host
                .endpoints
                .iter()
                .find(|e| e.error.is_none())
                .and_then(|e| e.chain.first())
                .cloned();
            let leaf = leaf.expect("a successful endpoint has a parsed chain");
            if previous.leaf().is_some_and(|old| old.sha256 != leaf.sha256) {
                events.push((
                    now,
                    "cert_changed".into(),
                    format!(
                        "now presents serial {} (sha256 {})",
                        leaf.serial, leaf.sha256
                    ),
                ));
            }
            host.presented_pin = Some(leaf.spki_sha256.clone());
            let verdict = self
                .policy
                .anchors
                .verify(&chain, &host.name, UnixTime::now());
            self.decide_trust(
                &mut host,
                &previous,
                &leaf.spki_sha256,
                &verdict,
                now,
                &mut events,
            );
            host.findings = self.findings(&host, &verdict, now);
        } else if !host.endpoints.iter().any(|e| !e.chain.is_empty()) {
            host.findings.clear();
        }
        if host.trust == TrustState::Changed
            && !host.findings.iter().any(|f| f.kind == FindingKind::Changed)
        {
            host.findings.push(Finding {
                kind: FindingKind::Changed,
                certificate: None,
                detail: host.trust_detail.clone(),
            });
        }

        inner.store.save(&host, &ders, &events)?;
        inner.hosts.insert(host.name.clone(), host);
        drop(inner);
        for (_, kind, detail) in &events {
            if kind == "key_changed" || kind == "probe_failed" {
                warn!(host = name, event = %kind, "{detail}");
            } else {
                info!(host = name, event = %kind, "{detail}");
            }
        }
        self.bump();
        Ok(())
    }

    fn decide_trust(
        &self,
        host: &mut Host,
        previous: &Host,
        presented: &str,
        verdict: &ChainVerdict,
        now: i64,
        events: &mut Vec<(i64, String, String)>,
    ) {
        let ca_ok = *verdict == ChainVerdict::Trusted;
        let short = &presented[..16];
        match host.pin.clone() {
            None if ca_ok => {
                host.pin = Some(presented.to_string());
                host.trust = TrustState::TrustedCa;
                host.trust_detail =
                    "chain verifies to a configured CA and covers the host name".into();
                events.push((
                    now,
                    "ca_pinned".into(),
                    format!("pinned {short}… (CA-verified)"),
                ));
            }
            None => match self.policy.first_sight {
                FirstSight::Tofu => {
                    host.pin = Some(presented.to_string());
                    host.trust = TrustState::Pinned;
                    host.trust_detail = "pinned on first use (first_sight = \"tofu\")".into();
                    events.push((
                        now,
                        "auto_pinned".into(),
                        format!("pinned {short}… on first use"),
                    ));
                }
                FirstSight::Approve => {
                    host.trust = TrustState::Pending;
                    host.trust_detail = format!(
                        "new key {short}…; approve it with `virtgate hosts approve {} --pin {presented}`",
                        host.name
                    );
                    if previous.trust != TrustState::Pending {
                        events.push((
                            now,
                            "pending".into(),
                            format!("key {presented} awaits approval"),
                        ));
                    }
                }
            },
            Some(pin) if pin == presented => {
                host.trust = if ca_ok {
                    TrustState::TrustedCa
                } else {
                    TrustState::Pinned
                };
                host.trust_detail = if ca_ok {
                    "chain verifies to a configured CA and covers the host name".into()
                } else {
                    "presented key matches the approved pin".into()
                };
            }
            Some(pin) if ca_ok => {
                host.pin = Some(presented.to_string());
                host.trust = TrustState::TrustedCa;
                host.trust_detail =
                    "renewed certificate verifies to a configured CA; pin updated".into();
                events.push((
                    now,
                    "cert_renewed".into(),
                    format!(
                        "pin {}… replaced by {short}… (CA-verified renewal)",
                        &pin[..16]
                    ),
                ));
            }
            Some(pin) => {
                host.trust = TrustState::Changed;
                host.trust_detail = format!(
                    "presents key {presented} but the approved pin is {pin}; if the change is legitimate run `virtgate hosts approve {} --pin {presented}`",
                    host.name
                );
                if previous.trust != TrustState::Changed {
                    events.push((
                        now,
                        "key_changed".into(),
                        format!("approved pin {pin}, presented {presented}"),
                    ));
                }
            }
        }
    }

    fn findings(&self, host: &Host, verdict: &ChainVerdict, now: i64) -> Vec<Finding> {
        let mut out: Vec<Finding> = Vec::new();
        let mut seen: BTreeSet<(FindingKind, Option<String>)> = BTreeSet::new();
        let mut push = |f: Finding, out: &mut Vec<Finding>| {
            if seen.insert((f.kind, f.certificate.clone())) {
                out.push(f);
            }
        };
        for endpoint in host.endpoints.iter().filter(|e| !e.chain.is_empty()) {
            for cert in &endpoint.chain {
                for f in certificate_findings(cert, now, self.policy.windows) {
                    push(f, &mut out);
                }
            }
            let mut names_used = vec![host.name.clone()];
            if host.source == HostSource::Mdns || !host.addresses.is_empty() {
                names_used.push(endpoint.address.to_string());
            }
            if let Some(f) = name_finding(&endpoint.chain[0], &names_used) {
                push(f, &mut out);
            }
        }
        if let ChainVerdict::Untrusted(why) = verdict {
            let leaf = host.leaf().map(|l| l.sha256.clone());
            push(
                Finding {
                    kind: FindingKind::UntrustedChain,
                    certificate: leaf,
                    detail: format!("does not chain to a configured CA: {why}"),
                },
                &mut out,
            );
        }
        out.sort_by_key(|f| f.kind);
        out
    }

    /// Approves the key a host presents now. `pin` must match it: approving blind is refused.
    pub fn approve(&self, name: &str, pin: &str) -> Result<Host, InventoryError> {
        let pin = pin.trim().to_ascii_lowercase();
        if pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(InventoryError::BadPin(pin));
        }
        let now = now_unix();
        let mut inner = self.lock();
        let mut host = inner
            .hosts
            .get(name)
            .cloned()
            .ok_or_else(|| InventoryError::UnknownHost(name.into()))?;
        let presented = host
            .presented_pin
            .clone()
            .ok_or_else(|| InventoryError::NothingPresented { host: name.into() })?;
        if presented != pin {
            return Err(InventoryError::PinMismatch {
                host: name.into(),
                given: pin,
                presented,
            });
        }
        host.pin = Some(pin.clone());
        if host.trust != TrustState::TrustedCa {
            host.trust = TrustState::Pinned;
        }
        host.trust_detail = "presented key matches the approved pin".into();
        host.findings.retain(|f| f.kind != FindingKind::Changed);
        let events = [(
            now,
            "approved".to_string(),
            format!("pin {pin} approved by an operator"),
        )];
        inner.store.save(&host, &[], &events)?;
        inner.hosts.insert(name.into(), host.clone());
        drop(inner);
        info!(host = name, pin = %pin, "key approved");
        self.bump();
        Ok(host)
    }

    /// Removes a host, its certificate history and its series. Returns whether it existed.
    pub fn forget(&self, name: &str, why: &str, kind: &str) -> Result<bool, InventoryError> {
        let now = now_unix();
        let mut inner = self.lock();
        let existed = inner.store.forget(name, now, kind, why)?;
        let existed = inner.hosts.remove(name).is_some() || existed;
        drop(inner);
        if existed {
            info!(host = name, "{why}");
            self.bump();
        }
        Ok(existed)
    }

    /// Mdns hosts unseen for longer than `retention`; static hosts stay while configured.
    pub fn unseen_longer_than(&self, now: i64, retention: Duration) -> Vec<String> {
        self.lock()
            .hosts
            .values()
            .filter(|h| {
                h.source == HostSource::Mdns && now - h.last_seen > retention.as_secs() as i64
            })
            .map(|h| h.name.clone())
            .collect()
    }

    /// Every certificate hosts present now, sorted by expiry; optionally only those expiring
    /// within `within`.
    pub fn certificates(&self, within: Option<Duration>) -> Vec<CertificateRow> {
        let now = now_unix();
        let inner = self.lock();
        let mut rows = Vec::new();
        for host in inner.hosts.values() {
            for endpoint in &host.endpoints {
                for cert in &endpoint.chain {
                    let expires_in = cert.not_after - now;
                    if within.is_some_and(|w| expires_in > w.as_secs() as i64) {
                        continue;
                    }
                    let findings = host
                        .findings
                        .iter()
                        .filter(|f| f.certificate.as_deref() == Some(cert.sha256.as_str()))
                        .map(|f| f.kind.as_str().to_string())
                        .collect();
                    rows.push(CertificateRow {
                        host: host.name.clone(),
                        address: endpoint.address,
                        role: if cert.position == 0 {
                            "host"
                        } else {
                            "host_chain"
                        }
                        .into(),
                        cert: cert.clone(),
                        expires_in,
                        findings,
                    });
                }
            }
        }
        rows.sort_by(|a, b| {
            a.cert
                .not_after
                .cmp(&b.cert.not_after)
                .then(a.host.cmp(&b.host))
        });
        rows
    }
}

fn join(addresses: &[std::net::IpAddr]) -> String {
    addresses
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtgate_discovery::HostAdvert;

    fn inventory(dir: &std::path::Path) -> Inventory {
        let policy = Policy {
            windows: Windows {
                warning: Duration::from_secs(30 * 86400),
                critical: Duration::from_secs(7 * 86400),
            },
            first_sight: FirstSight::Approve,
            anchors: TrustAnchors::none(),
        };
        Inventory::open(Store::open(&dir.join("i.sqlite")).unwrap(), policy).unwrap()
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
        let kinds: Vec<String> = inv
            .events(Some("h1"), 0, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, vec!["appeared", "removed"]);
        assert!(
            inv.due_for_probe(now_unix(), Duration::ZERO).is_empty(),
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
                reason: ProbeErrorReason::Refused,
                message: "refused".into(),
            }),
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
        let later = now_unix() + 15 * 86400;
        assert_eq!(
            inv.unseen_longer_than(later, Duration::from_secs(14 * 86400)),
            vec!["lan".to_string()]
        );
        assert!(inv
            .unseen_longer_than(now_unix(), Duration::from_secs(14 * 86400))
            .is_empty());
    }
}
