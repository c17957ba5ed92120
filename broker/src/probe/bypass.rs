//! Can users walk around the gateway? Checked from outside, a few handshakes per host per probe
//! round, at the address the certificate probe just reached:
//!
//! 1. **No client certificate**, and 2. **a certificate from a throwaway CA** (made in memory
//!    for this round, DN [`BYPASS_PROBE_DN`]): libvirtd sends one `0x01` byte after the TLS
//!    handshake when it accepts a client, and closes without it when it does not. A host that
//!    sends the byte here accepts anyone: `bypassable`, for certain.
//! 3. The first handshake also records the CA names of the host's TLS certificate request
//!    (rustls hands them to [`ResolvesClientCert::resolve`]). If one is a CA that signs people's
//!    certificates (`broker.user_ca_files`), every user bundle gets in unless the host's
//!    `tls_allowed_dn_list` keeps users out: `bypassable`, possible.
//! 4. If the broker holds that CA's key (`broker.user_ca_key_file`, the dev PKI of `virtgate
//!    up`), it settles the question with a throwaway user certificate ([`BYPASS_PROBE_DN`],
//!    valid a day, never written anywhere): the byte means certain, a close means the host's
//!    allow-list keeps it out. It is tried when the request names a users' CA, or names no CA
//!    at all (then the names cannot tell).
//!
//! Nothing is ever sent after the `0x01` byte (no RPC): the connection is dropped at once.
//! Each handshake is bounded by `broker.probe_timeout` and counted in
//! `virtgate_probe_duration_seconds`. A host whose key differs from its approved pin
//! (`changed`) is not checked, since whatever answers may not be the host; its last verdict
//! stays. Neither is one whose bypass answers come with a key other than the probe's.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::Histogram;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::debug;
use virtgate_api::{Host, TrustState};
use virtgate_pki::{
    throwaway_client, Ca, ClientRequest, InMemoryIdentity, Pin, BACKEND_DN, BYPASS_PROBE_DN,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ProbeResult;
use crate::config::BrokerConfig;

#[cfg(test)]
mod tests;
use crate::tls;
use crate::BrokerError;

/// What the check found at a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The host accepted a client that is not the gateway; the detail (starting `certain:`)
    /// says which, and what to do.
    Certain(String),
    /// The host trusts a users' CA and nothing showed whether its `tls_allowed_dn_list` keeps
    /// users out; the detail starts `possible:`.
    Possible(String),
    /// Every attempt was refused, and no users' CA is trusted (or the one trusted refused a
    /// user certificate).
    Closed,
}

impl Verdict {
    /// The `bypassable` finding's detail, if this is one.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Verdict::Certain(d) | Verdict::Possible(d) => Some(d),
            Verdict::Closed => None,
        }
    }
}

/// A CA that signs people's certificates, as a certificate request names it.
struct UsersCa {
    /// The DER Name, as it appears in a certificate request.
    subject_der: Vec<u8>,
    subject: String,
}

/// The bypass check's settings, made once at start.
pub struct Checker {
    users_cas: Vec<UsersCa>,
    /// One of them with its key, to sign throwaway user certificates.
    users_ca_key: Option<Ca>,
    /// What hosts must allow: the probe's (the gateway's backend) identity.
    gateway_dn: String,
    durations: Histogram,
}

/// What one connection showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Handshake and libvirt's `0x01` byte.
    Accepted,
    /// A failed handshake, or a close without the byte.
    Refused,
    /// No connection, or no answer in time: tells nothing.
    Unknown,
    /// A key other than the probe's answered: nothing it says is about this host.
    OtherKey,
}

struct Attempt {
    answer: Answer,
    /// The CA names of the certificate request; `None` when no certificate was requested.
    hints: Option<Vec<Vec<u8>>>,
}

impl Attempt {
    /// No connection made (the throwaway certificate could not be made).
    const UNKNOWN: Attempt = Attempt {
        answer: Answer::Unknown,
        hints: None,
    };
}

impl Checker {
    /// `None` unless `broker.user_ca_files` is set: without knowing which CAs sign users'
    /// certificates the broker does not look for a way around the gateway.
    pub fn from_config(
        config: &BrokerConfig,
        durations: Histogram,
    ) -> Result<Option<Arc<Checker>>, BrokerError> {
        if config.user_ca_files.is_empty() {
            return Ok(None);
        }
        let mut users_cas = Vec::new();
        for path in &config.user_ca_files {
            for der in tls::read_certs(path)? {
                let (_, cert) = X509Certificate::from_der(der.as_ref())
                    .map_err(|e| bad_file("user_ca_files", path, &e.to_string()))?;
                users_cas.push(UsersCa {
                    subject_der: cert.subject().as_raw().to_vec(),
                    subject: virtgate_pki::subject_dn(&der)
                        .map_err(|e| bad_file("user_ca_files", path, &e.to_string()))?,
                });
            }
        }
        let users_ca_key = match &config.user_ca_key_file {
            Some(key) => Some(users_ca_with_key(&config.user_ca_files, key)?),
            None => None,
        };
        let gateway_dn = match &config.client_cert_file {
            Some(path) => tls::read_certs(path)?
                .first()
                .and_then(|c| virtgate_pki::subject_dn(c).ok())
                .unwrap_or_else(|| BACKEND_DN.to_string()),
            None => BACKEND_DN.to_string(),
        };
        Ok(Some(Arc::new(Checker {
            users_cas,
            users_ca_key,
            gateway_dn,
            durations,
        })))
    }

    /// Checks `host` at the first address of `results` whose probe succeeded and puts the
    /// verdict there.
    pub(crate) async fn check(
        &self,
        host: &Host,
        results: &mut [ProbeResult],
        port: u16,
        timeout: Duration,
    ) {
        if host.trust == TrustState::Changed {
            return;
        }
        let Some((result, pin)) = results.iter_mut().find_map(|r| {
            let pin = r.outcome.as_ref().ok()?.chain.first()?;
            let pin = virtgate_pki::spki_pin(pin).ok()?;
            Some((r, pin))
        }) else {
            return;
        };
        let target = SocketAddr::new(result.address, port);
        result.bypass = self.verdict(target, pin, timeout).await;
        debug!(host = %host.name, %target, verdict = ?result.bypass, "bypass check");
    }

    async fn verdict(&self, target: SocketAddr, pin: Pin, timeout: Duration) -> Option<Verdict> {
        let foreign = async {
            match throwaway_client(BYPASS_PROBE_DN) {
                Ok(identity) => self.attempt(Some(identity), target, pin, timeout).await,
                Err(_) => Attempt::UNKNOWN,
            }
        };
        let (anonymous, foreign) = tokio::join!(self.attempt(None, target, pin, timeout), foreign);
        if [anonymous.answer, foreign.answer].contains(&Answer::OtherKey) {
            return None;
        }
        let fix = self.fix();
        if anonymous.answer == Answer::Accepted {
            return Some(certain(target, "a client without a certificate", &fix));
        }
        if foreign.answer == Answer::Accepted {
            let what =
                format!("a certificate ({BYPASS_PROBE_DN}) from a throwaway CA it cannot trust");
            return Some(certain(target, &what, &fix));
        }
        let hints = anonymous.hints.or(foreign.hints);
        let named = self.named(hints.as_deref().unwrap_or_default());
        let unnamed = hints.as_ref().is_none_or(Vec::is_empty);
        let mut unknown = [anonymous.answer, foreign.answer].contains(&Answer::Unknown);
        let mut users_refused = false;
        if let Some(ca) = self
            .users_ca_key
            .as_ref()
            .filter(|_| !named.is_empty() || unnamed)
        {
            let identity = ca
                .sign_client(&ClientRequest {
                    dn: BYPASS_PROBE_DN.into(),
                    days: 1,
                })
                .and_then(|issued| issued.in_memory());
            let answer = match identity {
                Ok(identity) => self.attempt(Some(identity), target, pin, timeout).await,
                Err(_) => Attempt::UNKNOWN,
            };
            match answer.answer {
                Answer::Accepted => {
                    let what = format!(
                        "a certificate for {BYPASS_PROBE_DN}, which no rule allows, from the \
                         users' CA {}",
                        ca.subject()
                    );
                    return Some(certain(target, &what, &fix));
                }
                Answer::Refused => users_refused = true,
                Answer::Unknown => unknown = true,
                Answer::OtherKey => return None,
            }
        }
        if !named.is_empty() && !users_refused {
            return Some(possible(target, &named, &fix));
        }
        (!unknown).then_some(Verdict::Closed)
    }

    /// The users' CAs among a certificate request's CA names.
    fn named(&self, hints: &[Vec<u8>]) -> Vec<&str> {
        self.users_cas
            .iter()
            .filter(|ca| hints.contains(&ca.subject_der))
            .map(|ca| ca.subject.as_str())
            .collect()
    }

    fn fix(&self) -> String {
        format!(
            "on the host, trust only the gateway's backend CA in libvirtd's ca_file, set \
             tls_allowed_dn_list = [\"{}\"] and restart libvirtd (docs/pki.md, Deploying)",
            self.gateway_dn
        )
    }

    /// One connection presenting `identity` (none: no certificate), within `timeout`.
    async fn attempt(
        &self,
        identity: Option<InMemoryIdentity>,
        target: SocketAddr,
        pin: Pin,
        timeout: Duration,
    ) -> Attempt {
        let recorder = Arc::new(Recorder::new(identity));
        let started = Instant::now();
        let answer = match tls::probe_config_with_resolver(recorder.clone()) {
            Ok(config) => tokio::time::timeout(timeout, connect(config, target, pin))
                .await
                .unwrap_or(Answer::Unknown),
            Err(_) => Answer::Unknown,
        };
        self.durations.observe(started.elapsed().as_secs_f64());
        let hints = recorder.hints.lock().expect("hints lock poisoned").take();
        Attempt {
            answer,
            hints: hints.filter(|_| answer != Answer::OtherKey),
        }
    }
}

/// The handshake, then the one byte libvirtd sends to a client it accepts. Nothing is sent
/// after it: the connection is dropped.
async fn connect(config: Arc<rustls::ClientConfig>, target: SocketAddr, pin: Pin) -> Answer {
    let Ok(tcp) = TcpStream::connect(target).await else {
        return Answer::Unknown;
    };
    let _ = tcp.set_nodelay(true);
    let Ok(mut tls) = TlsConnector::from(config)
        .connect(ServerName::IpAddress(target.ip().into()), tcp)
        .await
    else {
        return Answer::Refused;
    };
    let same_key = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| virtgate_pki::spki_pin(leaf).ok())
        == Some(pin);
    if !same_key {
        return Answer::OtherKey;
    }
    let mut byte = [0u8; 1];
    match tls.read(&mut byte).await {
        Ok(1) if byte[0] == 1 => Answer::Accepted,
        _ => Answer::Refused,
    }
}

/// Presents `identity` (or nothing) and keeps the CA names the server asked for.
#[derive(Debug)]
struct Recorder {
    identity: Option<Arc<CertifiedKey>>,
    hints: Mutex<Option<Vec<Vec<u8>>>>,
}

impl Recorder {
    fn new(identity: Option<InMemoryIdentity>) -> Self {
        let identity = identity.and_then(|id| {
            CertifiedKey::from_der(id.chain, id.key, &virtgate_pki::provider())
                .ok()
                .map(Arc::new)
        });
        Recorder {
            identity,
            hints: Mutex::new(None),
        }
    }
}

impl ResolvesClientCert for Recorder {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        *self.hints.lock().expect("hints lock poisoned") =
            Some(root_hint_subjects.iter().map(|h| h.to_vec()).collect());
        self.identity.clone()
    }

    fn has_certs(&self) -> bool {
        self.identity.is_some()
    }
}

fn certain(target: SocketAddr, what: &str, fix: &str) -> Verdict {
    Verdict::Certain(format!(
        "certain: libvirtd at {target} accepted {what} and confirmed it (libvirt's 0x01 byte), \
         so users connect to it directly, around the gateway; {fix}"
    ))
}

fn possible(target: SocketAddr, named: &[&str], fix: &str) -> Verdict {
    Verdict::Possible(format!(
        "possible: {target} asks clients for a certificate from {}, which signs users' \
         certificates (broker.user_ca_files), so users connect to it directly, around the \
         gateway, unless its tls_allowed_dn_list excludes them; {fix}",
        named.join(" or ")
    ))
}

fn bad_file(key: &str, path: &Path, reason: &str) -> BrokerError {
    BrokerError::Config(format!(
        "broker.{key}: {}: {reason}; give PEM CA certificates",
        path.display()
    ))
}

/// The users' CA whose certificate (in one of `cert_files`) belongs to `key`.
fn users_ca_with_key(cert_files: &[std::path::PathBuf], key: &Path) -> Result<Ca, BrokerError> {
    cert_files
        .iter()
        .find_map(|cert| Ca::load_files(cert, key).ok())
        .ok_or_else(|| {
            BrokerError::Config(format!(
                "broker.user_ca_key_file: {} belongs to no certificate in broker.user_ca_files \
                 (or is not an unencrypted PKCS#8 key, or the CA expired); point it at the key \
                 of one of those CAs, or unset it",
                key.display()
            ))
        })
}
