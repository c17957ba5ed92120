//! `check`'s view of the two CA roles ([`CaRole`]): a backend identity from a CA that signs
//! users' certificates, a user's certificate from a backend CA, and a libvirt host that trusts
//! a users' CA all let users connect to hosts directly, around the gateway.

use std::fs;
use std::path::Path;

use x509_parser::certificate::X509Certificate;

use super::Checker;
use crate::dev::BACKEND_DN;
use crate::dn::dn_string;
use crate::files::{CA_CERT, CLIENT_CERT, SERVER_CERT};
use crate::pem::{self, parse_cert};
use crate::roles::{is_backend_dn, CaRole};

/// How to make a backend identity from a backend CA.
const BACKEND_RECIPE: &str = "create a backend CA with `virtgate pki init --role backend`, issue \
    the identity with `virtgate pki issue backend --out DIR`, and make hosts trust only that CA \
    (docs/pki.md, Deploying)";

/// The first certificate of a PEM file, if it has one.
fn first_certificate(path: &Path) -> Option<Vec<u8>> {
    let text = fs::read_to_string(path).ok()?;
    pem::certificate_ders(&text).ok()?.into_iter().next()
}

/// The CA among `cas` that signed `cert` (by name and signature).
fn issuer_of<'a>(
    cert: &X509Certificate<'_>,
    cas: &'a [X509Certificate<'a>],
) -> Option<&'a X509Certificate<'a>> {
    cas.iter().find(|ca| {
        ca.subject().as_raw() == cert.issuer().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok()
    })
}

impl Checker<'_> {
    /// The role lines of a directory: `server` / `client` say which leaves it holds, `system`
    /// that its CA file is libvirt's system one (so the server files are a libvirt host's).
    pub(super) fn roles(
        &mut self,
        dir: &Path,
        (server, client, system): (bool, bool, bool),
        cas: &[Vec<u8>],
    ) {
        let parsed: Vec<X509Certificate<'_>> =
            cas.iter().filter_map(|der| parse_cert(der).ok()).collect();
        if !server && !client {
            for ca in &parsed {
                if let Some(role) = CaRole::of_parsed(ca) {
                    self.ok(CA_CERT, role_line(role, &dn_string(ca.subject())));
                }
            }
            return;
        }
        if client {
            if let Some(der) = first_certificate(&dir.join(CLIENT_CERT)) {
                if let Ok(leaf) = parse_cert(&der) {
                    self.client_role(&leaf, &parsed);
                }
            }
        }
        if server {
            let leaf = first_certificate(&dir.join(SERVER_CERT));
            let leaf = leaf.as_deref().and_then(|der| parse_cert(der).ok());
            self.host_trust(leaf.as_ref(), &parsed, system);
        }
    }

    /// A client certificate: the backend identity from a backend CA, people's from any other.
    fn client_role(&mut self, leaf: &X509Certificate<'_>, cas: &[X509Certificate<'_>]) {
        let Some(issuer) = issuer_of(leaf, cas) else {
            return; // the chain check has said what is wrong
        };
        let ca = dn_string(issuer.subject());
        let dn = dn_string(leaf.subject());
        match (CaRole::of_parsed(issuer), is_backend_dn(&dn)) {
            (Some(CaRole::Users), true) => self.problem(
                CLIENT_CERT,
                format!(
                    "the gateway's backend identity is signed by {ca}, a users' CA: hosts that \
                     trust it for the gateway accept every user's certificate from it too, so \
                     users connect to hosts directly, around the gateway; {BACKEND_RECIPE}"
                ),
            ),
            (None, true) => self.warning(
                CLIENT_CERT,
                format!(
                    "the gateway's backend identity is signed by {ca}, which declares no role: \
                     if that CA also signs users' certificates, hosts that trust it let users in \
                     directly, around the gateway; {BACKEND_RECIPE}"
                ),
            ),
            (Some(CaRole::Backend), true) => self.ok(
                CLIENT_CERT,
                format!(
                    "the gateway's backend identity from the backend CA {ca}: hosts trust only \
                     that CA and allow only {BACKEND_DN}"
                ),
            ),
            (Some(CaRole::Backend), false) => self.problem(
                CLIENT_CERT,
                format!(
                    "signed by {ca}, a backend CA, which every libvirt host trusts: {dn} gets \
                     into hosts directly unless their tls_allowed_dn_list keeps it out; backend \
                     CAs sign only the gateway's backend identity ({BACKEND_DN}); issue people's \
                     certificates from the users' CA (`virtgate pki issue client`) and revoke \
                     this one"
                ),
            ),
            _ => {}
        }
    }

    /// Server files: the CAs libvirtd trusts for its clients are those in its CA file.
    fn host_trust(
        &mut self,
        leaf: Option<&X509Certificate<'_>>,
        cas: &[X509Certificate<'_>],
        system: bool,
    ) {
        let own_issuer = leaf.and_then(|leaf| issuer_of(leaf, cas));
        for ca in cas {
            let subject = dn_string(ca.subject());
            let is_own =
                own_issuer.is_some_and(|own| own.subject().as_raw() == ca.subject().as_raw());
            match CaRole::of_parsed(ca) {
                Some(CaRole::Backend) => self.ok(
                    CA_CERT,
                    format!(
                        "trusts the backend CA {subject}; libvirtd must also allow only the \
                         gateway: tls_allowed_dn_list = [\"{BACKEND_DN}\"] in libvirtd.conf \
                         (check does not read it)"
                    ),
                ),
                Some(CaRole::Users) if is_own && !system => self.ok(
                    SERVER_CERT,
                    format!(
                        "signed by the users' CA {subject}: right for the gateway's front door \
                         (proxy.server_cert_file); a libvirt host must not use it, because \
                         libvirtd trusts the CA of its own certificate and would let every \
                         user in"
                    ),
                ),
                Some(CaRole::Users) => {
                    let also = if is_own {
                        " This host's own certificate comes from it too: re-issue that from a \
                         CA of the hosts' own first (`virtgate pki init --out hosts-ca`)."
                    } else {
                        ""
                    };
                    let message = format!(
                        "trusts {subject}, a users' CA: libvirtd accepts every user's \
                         certificate from it, so users connect directly, around the gateway, \
                         unless tls_allowed_dn_list names only the gateway; remove it from the \
                         CA file and trust only the backend CA (docs/pki.md, Deploying).{also}"
                    );
                    if system {
                        self.problem(CA_CERT, message);
                    } else {
                        self.warning(
                            CA_CERT,
                            format!("if these are a libvirt host's files: {message}"),
                        );
                    }
                }
                None => {}
            }
        }
    }
}

fn role_line(role: CaRole, subject: &str) -> String {
    match role {
        CaRole::Users => format!(
            "{subject} is a users' CA: it signs people's certificates and the gateway's server \
             certificate; never put it into a libvirt host's ca_file"
        ),
        CaRole::Backend => format!(
            "{subject} is a backend CA: it signs only the gateway's backend identity \
             ({BACKEND_DN}) and is the one CA libvirt hosts trust"
        ),
    }
}
