//! Host-level findings: the per-certificate judge applied to every chain a host presents, the
//! names it is reached by, and the inventory's own verdicts (`untrusted_chain`, `changed`).

use std::collections::BTreeSet;

use virtgate_api::{Finding, FindingKind, Host, HostSource, TrustState};

use crate::cert::{certificate_findings, name_finding, Role, Windows};
use crate::tls::ChainVerdict;

/// Every finding for `host` as probed at `now`, sorted by kind, each (kind, certificate) once.
pub(crate) fn host_findings(
    host: &Host,
    verdict: &ChainVerdict,
    now: i64,
    windows: Windows,
) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    let mut seen: BTreeSet<(FindingKind, Option<String>)> = BTreeSet::new();
    let mut push = |f: Finding, out: &mut Vec<Finding>| {
        if seen.insert((f.kind, f.certificate.clone())) {
            out.push(f);
        }
    };
    for endpoint in host.endpoints.iter().filter(|e| !e.chain.is_empty()) {
        for cert in &endpoint.chain {
            for f in certificate_findings(cert, now, windows, Role::Server) {
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
        push(
            Finding {
                kind: FindingKind::UntrustedChain,
                certificate: host.leaf().map(|l| l.sha256.clone()),
                detail: format!("does not chain to a configured CA: {why}"),
            },
            &mut out,
        );
    }
    out.sort_by_key(|f| f.kind);
    out
}

/// Keeps the `changed` finding in step with the trust state.
pub(crate) fn mark_changed(host: &mut Host) {
    let present = host.findings.iter().any(|f| f.kind == FindingKind::Changed);
    if host.trust == TrustState::Changed && !present {
        host.findings.push(Finding {
            kind: FindingKind::Changed,
            certificate: None,
            detail: host.trust_detail.clone(),
        });
    } else if host.trust != TrustState::Changed && present {
        host.findings.retain(|f| f.kind != FindingKind::Changed);
    }
}
