//! The front door's password login (step 2, when `proxy.front_auth` asks for one): libvirt's
//! AUTH_SASL_INIT, START and STEP answered by the gateway as a SCRAM server, within the
//! pre-open budget and size limit. One attempt per connection; every failure — unknown user,
//! wrong password, a refused message, too many failures — gets one and the same error reply
//! and ends the connection, and is counted as
//! `virtgate_proxy_auth_failures_total{stage="sasl",reason}` and logged without the password.

use std::net::IpAddr;
use std::sync::Arc;

use virtgate_rpc::remote::{
    SaslInitReply, SaslStartArgs, SaslStartReply, SaslStepArgs, SaslStepReply,
};
use virtgate_rpc::{error_reply, ok_reply, ErrorDomain, ErrorNumber, Header, Reader, Xdr};

use super::outcome::{ConnectionResult, Ended};
use crate::auth::scram::{self, ClientFirst, Mechanism, ScramError, ServerExchange};
use crate::auth::{FailedLogins, Limited, Users};
use crate::metrics::ProxyMetrics;

/// The mechanisms offered, in AUTH_SASL_INIT's comma-separated list. Never PLAIN or ANONYMOUS.
pub(crate) const MECHLIST: &str = "SCRAM-SHA-256,SCRAM-SHA-512";

/// The one error every failed login gets (virsh prints "authentication failed: …").
pub(crate) const LOGIN_FAILED: &str = "virtgate: wrong user name or password, or too many failed logins (wait a few minutes); check them, or ask an operator (`virtgate users list`)";

/// A CONNECT_OPEN before a successful login.
pub(crate) const LOGIN_FIRST: &str = "virtgate: this gateway needs a user name and password first (SASL SCRAM-SHA-256/512): virsh asks for them, or give an auth file (?authfile= or LIBVIRT_AUTH_FILE); python3-libvirt needs libvirt.openAuth with VIR_CRED_AUTHNAME and VIR_CRED_PASSPHRASE";

/// Why a login failed: the `reason` label, and words for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    UnknownUser,
    WrongPassword,
    RateLimited,
    BadMessage,
    /// CONNECT_OPEN (or a step out of order) before the login.
    NoLogin,
}

impl Failure {
    pub(crate) const ALL: [Failure; 5] = [
        Self::UnknownUser,
        Self::WrongPassword,
        Self::RateLimited,
        Self::BadMessage,
        Self::NoLogin,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::UnknownUser => "unknown_user",
            Self::WrongPassword => "wrong_password",
            Self::RateLimited => "rate_limited",
            Self::BadMessage => "bad_message",
            Self::NoLogin => "no_login",
        }
    }
}

enum State {
    Waiting,
    Initialised,
    Started {
        exchange: ServerExchange,
        user: String,
        known: bool,
    },
    LoggedIn(String),
    Failed,
}

/// One connection's login.
pub(crate) struct FrontLogin {
    users: Arc<Users>,
    failures: Arc<FailedLogins>,
    metrics: ProxyMetrics,
    source: IpAddr,
    state: State,
}

/// The gateway's answer to one SASL call.
pub(crate) enum Answer {
    /// Send this reply and go on.
    Reply(Vec<u8>),
    /// Send this reply, then end the connection so.
    Refuse(Vec<u8>, Ended),
}

impl FrontLogin {
    pub(crate) fn new(
        users: Arc<Users>,
        failures: Arc<FailedLogins>,
        metrics: ProxyMetrics,
        source: IpAddr,
    ) -> Self {
        Self {
            users,
            failures,
            metrics,
            source,
            state: State::Waiting,
        }
    }

    /// The user, once logged in.
    pub(crate) fn user(&self) -> Option<&str> {
        match &self.state {
            State::LoggedIn(user) => Some(user),
            _ => None,
        }
    }

    /// AUTH_SASL_INIT: the mechanisms.
    pub(crate) fn init(&mut self, h: &Header) -> Answer {
        if !matches!(self.state, State::Waiting) {
            return self.fail(
                h,
                Failure::NoLogin,
                None,
                "AUTH_SASL_INIT out of order".into(),
            );
        }
        self.state = State::Initialised;
        Answer::Reply(ok_reply(
            h,
            &SaslInitReply {
                mechlist: MECHLIST.into(),
            },
        ))
    }

    /// AUTH_SASL_START: the client's first message; answered with the server's, from the
    /// user's verifier or, for an unknown name, a fake one made the same way every time.
    pub(crate) fn start(&mut self, h: &Header, payload: &[u8]) -> Answer {
        if !matches!(self.state, State::Initialised) {
            return self.fail(
                h,
                Failure::NoLogin,
                None,
                "AUTH_SASL_START out of order".into(),
            );
        }
        let args = SaslStartArgs::decode(&mut Reader::new(payload));
        let Ok(SaslStartArgs {
            mech,
            data: Some(data),
        }) = args
        else {
            return self.fail(
                h,
                Failure::BadMessage,
                None,
                "AUTH_SASL_START without data".into(),
            );
        };
        let Some(mechanism) = Mechanism::from_name(&mech) else {
            let why = format!("mechanism {mech:?} is not offered");
            return self.fail(h, Failure::BadMessage, None, why);
        };
        let first = match ClientFirst::parse(&data) {
            Ok(first) => first,
            Err(e) => return self.fail(h, Failure::BadMessage, None, e.to_string()),
        };
        if let Err(limited) = self.failures.check(&first.user, self.source) {
            let why = match limited {
                Limited::User => "too many failed logins of this user name",
                Limited::Source => "too many failed logins from this address",
            };
            return self.fail(h, Failure::RateLimited, Some(&first.user), why.into());
        }
        let lookup = self.users.lookup(&first.user, mechanism);
        let (exchange, server_first) =
            ServerExchange::start(&first, lookup.verifier, &scram::nonce());
        self.state = State::Started {
            exchange,
            user: first.user,
            known: lookup.known,
        };
        Answer::Reply(ok_reply(
            h,
            &SaslStartReply {
                complete: false,
                data: Some(server_first),
            },
        ))
    }

    /// AUTH_SASL_STEP: the client's proof; on success the server's signature, complete.
    pub(crate) fn step(&mut self, h: &Header, payload: &[u8]) -> Answer {
        let State::Started {
            exchange,
            user,
            known,
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return self.fail(
                h,
                Failure::NoLogin,
                None,
                "AUTH_SASL_STEP out of order".into(),
            );
        };
        let data = SaslStepArgs::decode(&mut Reader::new(payload))
            .ok()
            .and_then(|a| a.data);
        let Some(data) = data else {
            return self.fail(
                h,
                Failure::BadMessage,
                Some(&user),
                "AUTH_SASL_STEP without data".into(),
            );
        };
        let (failure, why) = match (exchange.finish(&data), known) {
            (Ok(server_final), true) => {
                self.failures.succeeded(&user);
                self.state = State::LoggedIn(user);
                return Answer::Reply(ok_reply(
                    h,
                    &SaslStepReply {
                        complete: true,
                        data: Some(server_final),
                    },
                ));
            }
            // A fake verifier's keys are secret HMACs: no proof matches them.
            (Ok(_) | Err(ScramError::WrongProof), false) => {
                (Failure::UnknownUser, "no such user".to_string())
            }
            (Err(ScramError::WrongProof), true) => {
                (Failure::WrongPassword, "wrong password".to_string())
            }
            (Err(e), _) => (Failure::BadMessage, e.to_string()),
        };
        self.failures.failed(&user, self.source);
        self.fail(h, failure, Some(&user), why)
    }

    /// CONNECT_OPEN before a successful login.
    pub(crate) fn open_too_early(&mut self, h: &Header) -> Answer {
        let reply = error_reply(
            h,
            ErrorNumber::AUTH_FAILED,
            ErrorDomain::FROM_RPC,
            LOGIN_FIRST,
        );
        self.count(Failure::NoLogin);
        Answer::Refuse(
            reply,
            Ended::new(
                ConnectionResult::LoginFailed,
                "CONNECT_OPEN before the password login the gateway asked for",
            ),
        )
    }

    fn count(&self, failure: Failure) {
        self.metrics
            .auth_failures
            .with_label_values(&["sasl", failure.as_str()])
            .inc();
    }

    /// One and the same error reply for every failure; the connection ends.
    fn fail(&mut self, h: &Header, failure: Failure, user: Option<&str>, why: String) -> Answer {
        self.state = State::Failed;
        self.count(failure);
        let reply = error_reply(
            h,
            ErrorNumber::AUTH_FAILED,
            ErrorDomain::FROM_RPC,
            LOGIN_FAILED,
        );
        let user = user.unwrap_or("-");
        let detail = format!(
            "password login failed ({}) for user {user:?}: {why}",
            failure.as_str()
        );
        Answer::Refuse(reply, Ended::new(ConnectionResult::LoginFailed, detail))
    }
}
