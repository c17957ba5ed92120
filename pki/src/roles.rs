//! Two CAs with two jobs, so that users cannot walk around the gateway.
//!
//! - The **users' CA** signs people's client certificates (the gateway's `client_ca_files`) and
//!   may sign the gateway's front-door server certificate, so a user's `cacert.pem` verifies the
//!   gateway. Hosts never trust it.
//! - The **backend CA** signs nothing but the gateway's backend identity
//!   ([`BACKEND_DN`](crate::BACKEND_DN)). Hosts trust only it, and allow only that DN
//!   (`tls_allowed_dn_list`).
//!
//! If one CA did both, every user bundle would work directly against every host. A CA made by
//! virtgate says which one it is in its subject, as an organizational unit ([`CaRole::unit`]),
//! so `check`, `issue` and anyone reading a host's `ca_file` can tell them apart.

use std::fmt;
use std::str::FromStr;

use x509_parser::certificate::X509Certificate;

use crate::ca::{Ca, CaOptions, ClientRequest, InMemoryIdentity};
use crate::dev::BACKEND_DN;
use crate::dn::parse_dn;
use crate::PkiError;

/// The organization of the development CAs `virtgate up` creates. One without a role unit was
/// made by a virtgate from before the split, when one CA signed everything: it stays the users'
/// CA (admin bundles keep working), so it counts as one.
pub const DEV_ORGANIZATION: &str = "virtgate-dev";

/// The subject the broker's bypass check puts into throwaway client certificates: no access
/// rule and no `tls_allowed_dn_list` that names only the gateway allows it.
pub const BYPASS_PROBE_DN: &str = "O=virtgate-probe,CN=bypass-check";

/// What a CA is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaRole {
    /// Signs people's client certificates (and may sign the gateway's server certificate).
    Users,
    /// Signs only the gateway's backend identity; the one CA libvirt hosts trust.
    Backend,
}

impl CaRole {
    pub const ALL: [CaRole; 2] = [CaRole::Users, CaRole::Backend];

    /// `users` or `backend`, as `virtgate pki init --role` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CaRole::Users => "users",
            CaRole::Backend => "backend",
        }
    }

    /// The organizational unit (OU) that marks a CA's subject with its role.
    pub fn unit(self) -> &'static str {
        match self {
            CaRole::Users => "virtgate-users",
            CaRole::Backend => "virtgate-backend",
        }
    }

    /// For people: "users' CA" or "backend CA".
    pub fn describe(self) -> &'static str {
        match self {
            CaRole::Users => "users' CA",
            CaRole::Backend => "backend CA",
        }
    }

    /// The role a CA certificate declares (its OU), `None` for a CA that declares none. A
    /// development CA from before the split (organization [`DEV_ORGANIZATION`], no unit) is the
    /// users' CA.
    pub fn of_certificate(der: &[u8]) -> Option<CaRole> {
        let cert = crate::pem::parse_cert(der).ok()?;
        Self::of_parsed(&cert)
    }

    pub(crate) fn of_parsed(cert: &X509Certificate<'_>) -> Option<CaRole> {
        let subject = cert.subject();
        let units: Vec<&str> = subject
            .iter_organizational_unit()
            .filter_map(|u| u.as_str().ok())
            .collect();
        if let Some(role) = Self::ALL
            .into_iter()
            .find(|role| units.contains(&role.unit()))
        {
            return Some(role);
        }
        let legacy_dev = subject
            .iter_organization()
            .any(|o| o.as_str().ok() == Some(DEV_ORGANIZATION));
        (legacy_dev && units.is_empty()).then_some(CaRole::Users)
    }
}

impl fmt::Display for CaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CaRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("{s:?} is not a CA role; use users or backend"))
    }
}

/// A client certificate for `dn` from a CA made for it in memory and forgotten at once: no
/// libvirt host can trust it, so a host that accepts it does not check client certificates.
pub fn throwaway_client(dn: &str) -> Result<InMemoryIdentity, PkiError> {
    let ca = Ca::in_memory(&CaOptions {
        common_name: Some("virtgate-probe throwaway CA".into()),
        organization: "virtgate-probe".into(),
        days: 1,
        role: None,
    })?;
    ca.sign_client(&ClientRequest {
        dn: dn.into(),
        days: 1,
    })?
    .in_memory()
}

/// What is about to be issued, for [`issuer_fits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuing<'a> {
    /// A client certificate for this subject DN.
    Client { dn: &'a str },
    /// A server certificate (a libvirt host's, or the gateway's front door).
    Server,
}

/// Whether `dn` is the gateway's backend identity (same attributes and values, however it is
/// spaced or cased in the keys).
pub fn is_backend_dn(dn: &str) -> bool {
    match (parse_dn(dn), parse_dn(BACKEND_DN)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether a CA of `role` may sign `what`. `Err` when it must not (the message says which CA
/// to use instead); `Ok(Some(note))` when it may but the operator should know something;
/// `Ok(None)` when it is what the role is for.
pub fn issuer_fits(role: Option<CaRole>, what: Issuing<'_>) -> Result<Option<String>, PkiError> {
    let refuse = |reason: String| Err(PkiError::WrongCaRole { reason });
    match (what, role) {
        (Issuing::Client { dn }, Some(CaRole::Backend)) if !is_backend_dn(dn) => refuse(format!(
            "this is a backend CA: it signs only the gateway's backend identity \
             ({BACKEND_DN}), because every libvirt host trusts it and anything it signs gets \
             into every host; issue people's certificates from the users' CA (the default \
             --ca), or the backend identity with `virtgate pki issue backend`"
        )),
        (Issuing::Client { dn }, Some(CaRole::Users)) if is_backend_dn(dn) => refuse(format!(
            "this is a users' CA: the gateway's backend identity ({BACKEND_DN}) must come from \
             the backend CA, the only CA hosts trust; if hosts trusted the users' CA, every user \
             bundle would work directly against them. Create one with `virtgate pki init --role \
             backend` and issue with `virtgate pki issue backend`"
        )),
        (Issuing::Client { dn }, None) if is_backend_dn(dn) => Ok(Some(format!(
            "this CA declares no role, so virtgate cannot tell whether it also signs users' \
             certificates; if it does, hosts that trust it let every user in directly. Prefer a \
             backend CA (`virtgate pki init --role backend`) that signs only {BACKEND_DN}"
        ))),
        (Issuing::Server, Some(CaRole::Backend)) => refuse(
            "this is a backend CA: it signs only the gateway's backend identity; a server \
             certificate from it would put another key into every host's trust. Issue the \
             gateway's server certificate from the users' CA and hosts' certificates from a CA \
             of their own (`virtgate pki init --out hosts-ca`)"
                .into(),
        ),
        (Issuing::Server, Some(CaRole::Users)) => Ok(Some(
            "signed by the users' CA: right for the gateway's front door (proxy.server_cert_file), \
             whose clients hold this CA in their cacert.pem. Not for a libvirt host: libvirtd \
             must trust the CA of its own certificate, and a host that trusts the users' CA \
             lets every user in directly; give hosts certificates from a CA of their own \
             (`virtgate pki init --out hosts-ca`, then --ca hosts-ca)"
                .into(),
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_dn_is_recognised_however_it_is_spaced() {
        assert!(is_backend_dn("O=virtgate,CN=virtgate-gateway"));
        assert!(is_backend_dn("o = virtgate, cn = virtgate-gateway"));
        assert!(!is_backend_dn("O=virtgate,CN=admin"));
        assert!(!is_backend_dn("CN=virtgate-gateway"));
        assert!(!is_backend_dn("not a dn"));
    }

    #[test]
    fn each_role_signs_only_what_it_is_for() {
        let user = Issuing::Client {
            dn: "O=Example,CN=alice",
        };
        let backend = Issuing::Client { dn: BACKEND_DN };
        let users = Some(CaRole::Users);
        let backend_ca = Some(CaRole::Backend);

        assert!(matches!(issuer_fits(users, user), Ok(None)));
        assert!(matches!(issuer_fits(backend_ca, backend), Ok(None)));
        assert!(matches!(issuer_fits(None, user), Ok(None)));

        let err = issuer_fits(backend_ca, user).unwrap_err().to_string();
        assert!(
            err.contains("backend CA") && err.contains("users' CA"),
            "{err}"
        );
        let err = issuer_fits(users, backend).unwrap_err().to_string();
        assert!(err.contains("virtgate pki issue backend"), "{err}");
        let err = issuer_fits(backend_ca, Issuing::Server)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hosts-ca"), "{err}");

        let note = issuer_fits(None, backend).unwrap().unwrap();
        assert!(note.contains("--role backend"), "{note}");
        let note = issuer_fits(users, Issuing::Server).unwrap().unwrap();
        assert!(
            note.contains("front door") && note.contains("libvirt host"),
            "{note}"
        );
    }

    #[test]
    fn roles_read_back_from_their_names() {
        for role in CaRole::ALL {
            assert_eq!(role.as_str().parse::<CaRole>(), Ok(role));
        }
        assert!("hosts"
            .parse::<CaRole>()
            .unwrap_err()
            .contains("users or backend"));
    }
}
