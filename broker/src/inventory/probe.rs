//! Folding one probe of every address of a host into its record: endpoints, state, findings,
//! trust and the events worth logging. Pure: the time and the policy are inputs.

use std::net::IpAddr;

use rustls::pki_types::{CertificateDer, UnixTime};
use virtgate_api::{Endpoint, EventKind, Host, HostState};

use super::{trust, Change, NewEvent, TrustPolicy};
use crate::cert::parse_certificate;
use crate::findings::{host_findings, mark_bypass, mark_changed};
use crate::probe::{ProbeErrorReason, ProbeResult};

/// The host after the probe `results`, taken at `now`.
pub(crate) fn fold(
    previous: &Host,
    results: Vec<ProbeResult>,
    now: i64,
    policy: &TrustPolicy,
) -> Change {
    let mut host = previous.clone();
    let mut events = Vec::new();
    let mut ders = Vec::new();
    let mut chains: Vec<(IpAddr, Vec<CertificateDer<'static>>)> = Vec::new();
    let bypass = results.iter().find_map(|r| r.bypass.clone());
    host.last_probe = Some(now);
    host.endpoints = results
        .into_iter()
        .map(|r| endpoint(previous, r, now, &mut ders, &mut chains))
        .collect();
    update_state(&mut host, previous, now, &mut events);
    if let Some((address, chain)) = judged_chain(previous, &chains) {
        judge(
            &mut host,
            previous,
            address,
            chain,
            now,
            policy,
            &mut events,
        );
        promote_verified(&mut host);
    } else if !host.endpoints.iter().any(|e| !e.chain.is_empty()) {
        host.findings.clear();
    }
    mark_changed(&mut host);
    mark_bypass(&mut host, previous, bypass.as_ref());
    Change::Save {
        host: Box::new(host),
        ders,
        events,
    }
}

/// One address's outcome. A failed address keeps what it presented last time, so expiry stays
/// visible while it is down.
fn endpoint(
    previous: &Host,
    r: ProbeResult,
    now: i64,
    ders: &mut Vec<(String, Vec<u8>)>,
    chains: &mut Vec<(IpAddr, Vec<CertificateDer<'static>>)>,
) -> Endpoint {
    let mut endpoint = Endpoint {
        address: r.address,
        probed_at: now,
        duration_ms: r.duration.as_secs_f64() * 1000.0,
        error: None,
        error_reason: None,
        tls_version: None,
        auth: None,
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
                    endpoint.auth = presented.auth;
                    chains.push((r.address, presented.chain));
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
            if let Some(old) = previous.endpoints.iter().find(|o| o.address == r.address) {
                endpoint.chain = old.chain.clone();
            }
        }
    }
    endpoint
}

/// Up or down, the retry counter, and the `probe_failed` / `probe_recovered` events.
fn update_state(host: &mut Host, previous: &Host, now: i64, events: &mut Vec<NewEvent>) {
    let reachable = host.endpoints.iter().any(|e| e.error.is_none());
    let any_failed = host.endpoints.is_empty() || host.endpoints.iter().any(|e| e.error.is_some());
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
        events.push(NewEvent::new(now, EventKind::ProbeFailed, detail));
    }
    if reachable && previous.state == HostState::Down {
        events.push(NewEvent::new(
            now,
            EventKind::ProbeRecovered,
            "reachable again",
        ));
    }
}

/// The chain trust is judged by: the first verified address that answered; only when none of
/// them did (the host moved), the first other one. An address an announcement added cannot
/// make a pinned host look re-keyed while its own addresses answer with the pinned key.
fn judged_chain<'c>(
    previous: &Host,
    chains: &'c [(IpAddr, Vec<CertificateDer<'static>>)],
) -> Option<(IpAddr, &'c [CertificateDer<'static>])> {
    let verified = chains
        .iter()
        .find(|(address, _)| !previous.pending_addresses.contains(address));
    verified
        .or_else(|| chains.first())
        .map(|(address, chain)| (*address, chain.as_slice()))
}

/// Pending addresses that presented the host's pinned key become addresses the gateway uses.
fn promote_verified(host: &mut Host) {
    let Some(pin) = host.pin else {
        return;
    };
    let presents_pin = |address: &IpAddr| {
        host.endpoints.iter().any(|e| {
            e.address == *address
                && e.error.is_none()
                && e.chain.first().is_some_and(|leaf| leaf.spki_sha256 == pin)
        })
    };
    let (verified, still_pending): (Vec<IpAddr>, Vec<IpAddr>) =
        host.pending_addresses.iter().partition(|a| presents_pin(a));
    host.addresses.extend(verified);
    host.pending_addresses = still_pending;
}

/// The presented leaf against the pin and the CAs: trust, findings, and `cert_changed`.
#[allow(clippy::too_many_arguments)] // the fold's state, passed down once
fn judge(
    host: &mut Host,
    previous: &Host,
    address: IpAddr,
    chain: &[CertificateDer<'static>],
    now: i64,
    policy: &TrustPolicy,
    events: &mut Vec<NewEvent>,
) {
    let Some(leaf) = host
        .endpoints
        .iter()
        .find(|e| e.address == address && e.error.is_none())
        .and_then(|e| e.chain.first())
        .cloned()
    else {
        return;
    };
    if previous.leaf().is_some_and(|old| old.sha256 != leaf.sha256) {
        let detail = format!(
            "now presents serial {} (sha256 {})",
            leaf.serial, leaf.sha256
        );
        events.push(NewEvent::new(now, EventKind::CertChanged, detail));
    }
    host.presented_pin = Some(leaf.spki_sha256);
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    let verdict = policy.anchors.verify(chain, &host.name, at);
    let decision = trust::decide(previous, leaf.spki_sha256, &verdict, policy.first_sight);
    host.trust = decision.trust;
    host.pin = decision.pin;
    host.trust_detail = decision.detail;
    if let Some((kind, detail)) = decision.event {
        events.push(NewEvent::new(now, kind, detail));
    }
    host.findings = host_findings(host, &verdict, now, policy.windows);
}
