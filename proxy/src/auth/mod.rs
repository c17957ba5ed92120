//! Passwords, both ways: the users who may log in at the front door with SCRAM
//! ([`users`]), the limits on their failed logins ([`limits`]), the gateway's own logins to
//! hosts whose libvirtd demands SASL ([`HostCredentials`]), and the mechanism itself
//! ([`scram`]), written once for both roles.
//!
//! The proxy does not know where users and host credentials are kept: its owner hands it a
//! [`Logins`] (the binary feeds it from the broker, in process or followed over the API, and
//! from the host-credentials directory).

pub mod limits;
pub mod scram;
pub mod users;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use limits::{FailedLogins, Limited, LoginLimits};
pub use scram::{ClientSecret, Mechanism, Salted, ScramError, Verifier};
pub use users::{is_valid_name, verifiers_for, Users, UsersWatch};

/// How clients authenticate at the front door (`proxy.front_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontAuth {
    /// A client certificate, as before passwords existed.
    #[default]
    Certificate,
    /// A client certificate, or (without one) a SCRAM password login.
    CertificateOrPassword,
    /// Both: a client certificate and a SCRAM password login.
    CertificateAndPassword,
}

impl FrontAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::CertificateOrPassword => "certificate_or_password",
            Self::CertificateAndPassword => "certificate_and_password",
        }
    }

    /// Whether a client may connect without a certificate.
    pub fn certificate_optional(self) -> bool {
        self == Self::CertificateOrPassword
    }

    /// Whether a client that presented `certificate` (or none) must log in with a password.
    pub fn needs_password(self, certificate: bool) -> bool {
        match self {
            Self::Certificate => false,
            Self::CertificateOrPassword => !certificate,
            Self::CertificateAndPassword => true,
        }
    }
}

/// The gateway's login for one host: a user name the host's SASL database knows, and what the
/// gateway knows of its password.
#[derive(Clone, Debug)]
pub struct HostLogin {
    pub user: String,
    pub secret: ClientSecret,
}

/// Where the gateway finds its logins for hosts that demand SASL. Read at each connection to
/// such a host, so a new credential applies to the next connection.
pub trait HostCredentials: Send + Sync + 'static {
    /// The login for `host` (lower case), if one is set.
    fn login(&self, host: &str) -> Option<HostLogin>;
    /// A login for `host` as `user` succeeded and the host proved it knows the password:
    /// `salted` may be kept in place of the password from now on.
    fn learned(&self, host: &str, user: &str, salted: &Salted);
}

/// No host credentials at all: hosts that demand SASL get a clear error.
pub struct NoHostCredentials;

impl HostCredentials for NoHostCredentials {
    fn login(&self, _host: &str) -> Option<HostLogin> {
        None
    }
    fn learned(&self, _host: &str, _user: &str, _salted: &Salted) {}
}

/// What the proxy's owner hands it about passwords.
#[derive(Clone)]
pub struct Logins {
    /// The front door's users, kept current by the owner.
    pub users: UsersWatch,
    pub host_credentials: Arc<dyn HostCredentials>,
}

impl Logins {
    /// No users and no host credentials.
    pub fn none() -> Self {
        let (_, users) = watch::channel(Arc::new(Users::new([], &[])));
        Self {
            users,
            host_credentials: Arc::new(NoHostCredentials),
        }
    }
}
