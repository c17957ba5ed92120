//! The trust state machine: given what a host presented and what its chain proves, what does
//! virtgate trust now? A pure function of its inputs, so every transition is tested in a table.

use virtgate_api::{EventKind, Host, Pin, TrustState};

use crate::config::FirstSight;
use crate::tls::ChainVerdict;

const CA_VERIFIED: &str = "chain verifies to a configured CA and covers the host name";
const PIN_MATCHES: &str = "presented key matches the approved pin";

/// What the host's trust becomes after a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrustDecision {
    pub trust: TrustState,
    /// The approved pin after the decision.
    pub pin: Option<Pin>,
    pub detail: String,
    /// What the event log should record, if this is news.
    pub event: Option<(EventKind, String)>,
}

/// Decides trust for a host that presented the key `presented`.
///
/// - No pin yet: a CA-verified chain pins itself (`trusted_ca`); otherwise the first sight rule
///   applies (`tofu` pins, `approve` waits as `pending`).
/// - The approved pin presented: `pinned` (or `trusted_ca` when the chain also verifies).
/// - Another key: a CA-verified renewal re-pins by itself; anything else is `changed`, refused
///   until an operator approves the new key.
pub(crate) fn decide(
    previous: &Host,
    presented: Pin,
    verdict: &ChainVerdict,
    first_sight: FirstSight,
) -> TrustDecision {
    let ca_ok = *verdict == ChainVerdict::Trusted;
    let new = short(presented);
    let name = &previous.name;
    if previous.agent {
        return enrolled(previous, presented);
    }
    if previous.pin.is_none() && announces_agent(previous) {
        return TrustDecision {
            trust: TrustState::Pending,
            pin: None,
            detail: format!("announces itself as a virtgate agent: enroll it with `virtgate enroll {name}` (its key {new}… is trusted by enrollment, never by approval or on first use)"),
            event: (previous.trust != TrustState::Pending)
                .then(|| (EventKind::Pending, format!("agent key {presented} awaits enrollment"))),
        };
    }
    match previous.pin {
        None if ca_ok => TrustDecision {
            trust: TrustState::TrustedCa,
            pin: Some(presented),
            detail: CA_VERIFIED.into(),
            event: Some((EventKind::CaPinned, format!("pinned {new}… (CA-verified)"))),
        },
        None => match first_sight {
            FirstSight::Tofu => TrustDecision {
                trust: TrustState::Pinned,
                pin: Some(presented),
                detail: "pinned on first use (first_sight = \"tofu\")".into(),
                event: Some((EventKind::AutoPinned, format!("pinned {new}… on first use"))),
            },
            FirstSight::Approve => TrustDecision {
                trust: TrustState::Pending,
                pin: None,
                detail: format!(
                    "new key {new}…; approve it with `virtgate hosts approve {name} --pin {presented}`"
                ),
                event: (previous.trust != TrustState::Pending).then(|| {
                    (EventKind::Pending, format!("key {presented} awaits approval"))
                }),
            },
        },
        Some(pin) if pin == presented => TrustDecision {
            trust: if ca_ok {
                TrustState::TrustedCa
            } else {
                TrustState::Pinned
            },
            pin: Some(pin),
            detail: if ca_ok { CA_VERIFIED } else { PIN_MATCHES }.into(),
            event: None,
        },
        Some(pin) if ca_ok => TrustDecision {
            trust: TrustState::TrustedCa,
            pin: Some(presented),
            detail: "renewed certificate verifies to a configured CA; pin updated".into(),
            event: Some((
                EventKind::CertRenewed,
                format!(
                    "pin {}… replaced by {new}… (CA-verified renewal)",
                    short(pin)
                ),
            )),
        },
        Some(pin) => TrustDecision {
            trust: TrustState::Changed,
            pin: Some(pin),
            detail: format!(
                "presents key {presented} but the approved pin is {pin}; if the change is legitimate run `virtgate hosts approve {name} --pin {presented}`"
            ),
            event: (previous.trust != TrustState::Changed).then(|| {
                (
                    EventKind::KeyChanged,
                    format!("approved pin {pin}, presented {presented}"),
                )
            }),
        },
    }
}

/// Whether a host announces `virtgate agent` in its TXT. Untrusted like all TXT, so it can only
/// withhold trust: such a host is never pinned on first use or by approval, only by enrollment.
pub(crate) fn announces_agent(host: &Host) -> bool {
    host.txt.contains_key("virtgate-agent")
}

/// A host enrolled through its agent keeps the key enrollment pinned; any other key is
/// `changed` until it is enrolled again (a CA never vouches for an agent's key).
fn enrolled(previous: &Host, presented: Pin) -> TrustDecision {
    let name = &previous.name;
    match previous.pin {
        Some(pin) if pin == presented => TrustDecision {
            trust: TrustState::Enrolled,
            pin: Some(pin),
            detail: "presents the key pinned at enrollment".into(),
            event: None,
        },
        pin => TrustDecision {
            trust: TrustState::Changed,
            pin,
            detail: format!("presents key {presented}, not the key its agent enrolled with; if the host was reinstalled, enroll it again: `virtgate enroll {name}`"),
            event: (previous.trust != TrustState::Changed).then(|| {
                (
                    EventKind::KeyChanged,
                    format!("enrolled key {}, presented {presented}", pin.map_or_else(|| "(none)".into(), |p| p.to_string())),
                )
            }),
        },
    }
}

/// The first 16 hex digits, enough to tell keys apart in a log line.
fn short(pin: Pin) -> String {
    let mut hex = pin.to_string();
    hex.truncate(16);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtgate_api::HostSource;

    const APPROVED: Pin = Pin::from_bytes([0xaa; 32]);
    const OTHER: Pin = Pin::from_bytes([0xbb; 32]);

    #[derive(Clone, Copy, Debug)]
    enum PinBefore {
        None,
        Same,
        Other,
    }

    fn host(pin: PinBefore, trust: TrustState) -> Host {
        let mut h = Host::new("h1", HostSource::Static, 16514, vec![], 0);
        h.pin = match pin {
            PinBefore::None => None,
            PinBefore::Same => Some(APPROVED),
            PinBefore::Other => Some(OTHER),
        };
        h.trust = trust;
        h
    }

    /// (pin before) × (CA verified) × (first sight) → (trust, pin after, event).
    #[test]
    fn every_combination_of_pin_chain_and_first_sight_has_one_outcome() {
        use EventKind as E;
        use FirstSight::{Approve, Tofu};
        use PinBefore as P;
        use TrustState as T;
        let presented = APPROVED;
        type Row = (P, bool, FirstSight, T, Option<Pin>, Option<E>);
        #[rustfmt::skip]
        let table: &[Row] = &[
            (P::None,  true,  Approve, T::TrustedCa, Some(APPROVED), Some(E::CaPinned)),
            (P::None,  true,  Tofu,    T::TrustedCa, Some(APPROVED), Some(E::CaPinned)),
            (P::None,  false, Approve, T::Pending,   None,           Some(E::Pending)),
            (P::None,  false, Tofu,    T::Pinned,    Some(APPROVED), Some(E::AutoPinned)),
            (P::Same,  true,  Approve, T::TrustedCa, Some(APPROVED), None),
            (P::Same,  true,  Tofu,    T::TrustedCa, Some(APPROVED), None),
            (P::Same,  false, Approve, T::Pinned,    Some(APPROVED), None),
            (P::Same,  false, Tofu,    T::Pinned,    Some(APPROVED), None),
            (P::Other, true,  Approve, T::TrustedCa, Some(APPROVED), Some(E::CertRenewed)),
            (P::Other, true,  Tofu,    T::TrustedCa, Some(APPROVED), Some(E::CertRenewed)),
            (P::Other, false, Approve, T::Changed,   Some(OTHER),    Some(E::KeyChanged)),
            (P::Other, false, Tofu,    T::Changed,   Some(OTHER),    Some(E::KeyChanged)),
        ];
        for &(pin, ca, first_sight, trust, pin_after, event) in table {
            let verdict = if ca {
                ChainVerdict::Trusted
            } else {
                ChainVerdict::Untrusted("UnknownIssuer".into())
            };
            let d = decide(
                &host(pin, TrustState::Unknown),
                presented,
                &verdict,
                first_sight,
            );
            let case = format!("pin {pin:?}, CA verified {ca}, first sight {first_sight:?}");
            assert_eq!(d.trust, trust, "{case}");
            assert_eq!(d.pin, pin_after, "{case}");
            assert_eq!(d.event.map(|(k, _)| k), event, "{case}");
        }
    }

    #[test]
    fn an_enrolled_host_keeps_its_key_and_no_ca_or_first_sight_rule_changes_that() {
        let mut h = host(PinBefore::Same, TrustState::Enrolled);
        h.agent = true;
        for verdict in [ChainVerdict::Trusted, ChainVerdict::NoAnchors] {
            for first_sight in [FirstSight::Approve, FirstSight::Tofu] {
                let same = decide(&h, APPROVED, &verdict, first_sight);
                assert_eq!(
                    (same.trust, same.pin),
                    (TrustState::Enrolled, Some(APPROVED))
                );
                let other = decide(&h, OTHER, &verdict, first_sight);
                assert_eq!(
                    (other.trust, other.pin),
                    (TrustState::Changed, Some(APPROVED))
                );
                assert!(
                    other.detail.contains("`virtgate enroll h1`"),
                    "{}",
                    other.detail
                );
            }
        }
    }

    #[test]
    fn a_host_announcing_an_agent_is_never_pinned_on_first_use() {
        let mut h = host(PinBefore::None, TrustState::Unknown);
        h.txt.insert("virtgate-agent".into(), "1".into());
        let d = decide(&h, APPROVED, &ChainVerdict::NoAnchors, FirstSight::Tofu);
        assert_eq!((d.trust, d.pin), (TrustState::Pending, None));
        assert!(d.detail.contains("`virtgate enroll h1`"), "{}", d.detail);
    }

    #[test]
    fn a_state_already_reported_is_not_logged_again() {
        let untrusted = ChainVerdict::Untrusted("UnknownIssuer".into());
        let pending = host(PinBefore::None, TrustState::Pending);
        assert_eq!(
            decide(&pending, APPROVED, &untrusted, FirstSight::Approve).event,
            None
        );
        let changed = host(PinBefore::Other, TrustState::Changed);
        let d = decide(&changed, APPROVED, &untrusted, FirstSight::Approve);
        assert_eq!((d.trust, d.event), (TrustState::Changed, None));
    }

    #[test]
    fn a_chain_to_a_ca_that_fails_for_another_reason_does_not_verify() {
        let expired = ChainVerdict::TrustedIssuerOnly("expired".into());
        let d = decide(
            &host(PinBefore::None, TrustState::Unknown),
            APPROVED,
            &expired,
            FirstSight::Approve,
        );
        assert_eq!(d.trust, TrustState::Pending);
        let d = decide(
            &host(PinBefore::Other, TrustState::Pinned),
            APPROVED,
            &expired,
            FirstSight::Approve,
        );
        assert_eq!(
            d.trust,
            TrustState::Changed,
            "only a verified chain re-pins by itself"
        );
    }

    #[test]
    fn the_operator_is_told_the_exact_approve_command() {
        let untrusted = ChainVerdict::NoAnchors;
        let d = decide(
            &host(PinBefore::Other, TrustState::Pinned),
            APPROVED,
            &untrusted,
            FirstSight::Approve,
        );
        assert!(
            d.detail
                .ends_with(&format!("virtgate hosts approve h1 --pin {APPROVED}`")),
            "{}",
            d.detail
        );
    }
}
