//! Host-level findings: the per-certificate judge applied to every chain a host presents, the
//! names it is reached by, and the inventory's own verdicts (`untrusted_chain`, `changed`,
//! `bypassable`).

use std::collections::BTreeSet;

use virtgate_api::{Finding, FindingKind, Host, HostSource, TrustState};

use crate::cert::{certificate_findings, name_finding, Role, Windows};
use crate::probe::bypass::Verdict;
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

/// Keeps the `bypassable` finding in step with the bypass check: its verdict when one was made
/// this round; otherwise (no check, or it could not tell) the previous finding stays while the
/// host still has certificates on record.
pub(crate) fn mark_bypass(host: &mut Host, previous: &Host, verdict: Option<&Verdict>) {
    host.findings.retain(|f| f.kind != FindingKind::Bypassable);
    let finding = match verdict {
        Some(verdict) => verdict.detail().map(|detail| Finding {
            kind: FindingKind::Bypassable,
            certificate: None,
            detail: detail.to_string(),
        }),
        None if host.endpoints.iter().any(|e| !e.chain.is_empty()) => previous
            .findings
            .iter()
            .find(|f| f.kind == FindingKind::Bypassable)
            .cloned(),
        None => None,
    };
    if let Some(finding) = finding {
        host.findings.push(finding);
        host.findings.sort_by_key(|f| f.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtgate_api::{Endpoint, HostState};

    fn host_with(findings: Vec<Finding>) -> Host {
        let mut host = Host::new("h1", HostSource::Static, 16514, Vec::new(), 0);
        host.state = HostState::Up;
        host.findings = findings;
        host
    }

    fn bypassable(detail: &str) -> Finding {
        Finding {
            kind: FindingKind::Bypassable,
            certificate: None,
            detail: detail.into(),
        }
    }

    fn kinds(host: &Host) -> Vec<FindingKind> {
        host.findings.iter().map(|f| f.kind).collect()
    }

    #[test]
    fn a_verdict_sets_or_clears_the_finding_and_no_verdict_keeps_the_last_one() {
        let previous = host_with(vec![bypassable("certain: old")]);
        let changed = Finding {
            kind: FindingKind::Changed,
            certificate: None,
            detail: "key".into(),
        };

        let mut host = host_with(vec![changed]);
        mark_bypass(
            &mut host,
            &previous,
            Some(&Verdict::Possible("possible: x".into())),
        );
        assert_eq!(
            kinds(&host),
            [FindingKind::Changed, FindingKind::Bypassable]
        );
        assert_eq!(host.findings[1].detail, "possible: x");

        mark_bypass(&mut host, &previous, Some(&Verdict::Closed));
        assert_eq!(kinds(&host), [FindingKind::Changed]);

        // No verdict (not checked, or timeouts): the last one stays while certificates do.
        let mut host = host_with(Vec::new());
        host.endpoints.push(Endpoint {
            address: "127.0.0.1".parse().unwrap(),
            probed_at: 0,
            duration_ms: 0.0,
            error: None,
            error_reason: None,
            tls_version: None,
            auth: None,
            chain: vec![virtgate_pki::parse_certificate(&test_certificate(), 0).unwrap()],
        });
        mark_bypass(&mut host, &previous, None);
        assert_eq!(host.findings, [bypassable("certain: old")]);
        host.endpoints[0].chain.clear();
        mark_bypass(&mut host, &previous, None);
        assert!(host.findings.is_empty());
    }

    fn test_certificate() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["h1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }
}
