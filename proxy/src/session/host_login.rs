//! Step 4, for a host whose libvirtd demands SASL (`auth_tls = "sasl"`): the gateway logs in
//! as the SCRAM client with the credentials set for the host (`virtgate hosts credentials`),
//! checks the host's signature, and only then may the client's CONNECT_OPEN go on. One attempt
//! per client connection; failures are refusals naming what to do, counted as
//! `virtgate_proxy_backend_login_failures_total{reason}`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use virtgate_rpc::remote::{
    SaslInitReply, SaslStartArgs, SaslStartReply, SaslStepArgs, SaslStepReply, PROC_AUTH_SASL_INIT,
    PROC_AUTH_SASL_START, PROC_AUTH_SASL_STEP,
};
use virtgate_rpc::{ErrorDomain, ErrorNumber, ErrorReply, PacketStream, Reader, Status, Xdr};

use super::backend::{call_host, HostCallError};
use super::outcome::{ConnectionResult, Refusal};
use crate::auth::scram::{self, ClientExchange, Mechanism, ScramError};
use crate::auth::{HostCredentials, HostLogin};
use crate::metrics::ProxyMetrics;

/// What the host step needs to log in to hosts.
#[derive(Clone, Copy)]
pub(crate) struct HostSide<'a> {
    pub credentials: &'a dyn HostCredentials,
    pub metrics: &'a ProxyMetrics,
}

/// Why the gateway's login to a host failed: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginFailure {
    NoCredentials,
    NoCommonMechanism,
    Rejected,
    BadServerSignature,
    StaleCredentials,
    Protocol,
}

impl LoginFailure {
    pub(crate) const ALL: [LoginFailure; 6] = [
        Self::NoCredentials,
        Self::NoCommonMechanism,
        Self::Rejected,
        Self::BadServerSignature,
        Self::StaleCredentials,
        Self::Protocol,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NoCredentials => "no_credentials",
            Self::NoCommonMechanism => "no_common_mechanism",
            Self::Rejected => "rejected",
            Self::BadServerSignature => "bad_server_signature",
            Self::StaleCredentials => "stale_credentials",
            Self::Protocol => "protocol",
        }
    }
}

/// The SCRAM mechanism to use from a host's `mechlist` (comma- or space-separated): SHA-256
/// first, then SHA-512; nothing else.
pub(crate) fn choose(mechlist: &str) -> Option<Mechanism> {
    let offered: Vec<&str> = mechlist
        .split([',', ' '])
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    Mechanism::ALL
        .into_iter()
        .find(|m| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name())))
}

/// Logs in to `host` over `backend`, each exchange within `limit`.
pub(crate) async fn log_in<S: AsyncRead + AsyncWrite + Unpin>(
    backend: &mut PacketStream<S>,
    host: &str,
    side: Option<HostSide<'_>>,
    limit: Duration,
) -> Result<(), Refusal> {
    let login = side.and_then(|s| s.credentials.login(host));
    let result = match &login {
        None => Err((
            LoginFailure::NoCredentials,
            format!(
                "virtgate: host {host} requires a SASL login from the gateway and none is set; \
                 an operator sets one with `virtgate hosts credentials {host} --user NAME`"
            ),
            "the host demands SASL; no credentials for it".to_string(),
        )),
        Some(login) => exchange(backend, host, login, side, limit).await,
    };
    let Err((failure, message, detail)) = result else {
        return Ok(());
    };
    if let Some(side) = side {
        side.metrics
            .backend_login_failures
            .with_label_values(&[failure.as_str()])
            .inc();
    }
    let code = match failure {
        LoginFailure::NoCredentials | LoginFailure::NoCommonMechanism => {
            ErrorNumber::AUTH_UNAVAILABLE
        }
        _ => ErrorNumber::AUTH_FAILED,
    };
    Err(Refusal {
        result: ConnectionResult::BackendLoginFailed,
        code,
        domain: ErrorDomain::FROM_REMOTE,
        message,
        detail,
    })
}

type Failed = (LoginFailure, String, String);

/// INIT, START, STEP and the server's signature.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    backend: &mut PacketStream<S>,
    host: &str,
    login: &HostLogin,
    side: Option<HostSide<'_>>,
    limit: Duration,
) -> Result<(), Failed> {
    let user = &login.user;
    let protocol = |what: &str| {
        (
            LoginFailure::Protocol,
            format!("virtgate: host {host} broke off the gateway's SASL login ({what})"),
            format!("SASL with the host failed: {what}"),
        )
    };
    let rejected = |why: String| {
        (
            LoginFailure::Rejected,
            format!(
                "virtgate: host {host} refused the gateway's SASL login as {user:?}: the stored \
                 credentials are wrong for it; set them again with `virtgate hosts credentials \
                 {host} --user NAME` (the name and password in the host's SASL database)"
            ),
            format!("the host refused the login as {user:?}: {why}"),
        )
    };
    let (_, init) = host_call(backend, PROC_AUTH_SASL_INIT, 2, &[], limit)
        .await
        .map_err(|e| protocol(&e))?;
    let mechlist = SaslInitReply::decode(&mut Reader::new(&init))
        .map_err(|_| protocol("unreadable AUTH_SASL_INIT reply"))?
        .mechlist;
    let Some(mechanism) = choose(&mechlist) else {
        return Err((
            LoginFailure::NoCommonMechanism,
            format!(
                "virtgate: host {host} offers SASL mechanisms {mechlist:?}, and the gateway logs in \
                 only with SCRAM-SHA-256 or SCRAM-SHA-512; set `mech_list: scram-sha-256` in the \
                 host's /etc/sasl2/libvirt.conf"
            ),
            format!("no SCRAM mechanism in {mechlist:?}"),
        ));
    };
    let (client, first) = ClientExchange::start(mechanism, user, &scram::nonce());
    let start = SaslStartArgs {
        mech: mechanism.name().into(),
        data: Some(first),
    };
    let (status, reply) = host_call(backend, PROC_AUTH_SASL_START, 3, &start.to_xdr(), limit)
        .await
        .map_err(|e| protocol(&e))?;
    if status != Status::Ok {
        return Err(rejected(error_text(&reply)));
    }
    let server_first = SaslStartReply::decode(&mut Reader::new(&reply))
        .ok()
        .and_then(|r| r.data)
        .ok_or_else(|| protocol("no server-first message"))?;
    let (waiting, client_final) = client
        .respond(&server_first, &login.secret)
        .map_err(|e| scram_failure(host, user, &e))?;
    let step = SaslStepArgs {
        data: Some(client_final),
    };
    let (status, reply) = host_call(backend, PROC_AUTH_SASL_STEP, 4, &step.to_xdr(), limit)
        .await
        .map_err(|e| protocol(&e))?;
    if status != Status::Ok {
        return Err(rejected(error_text(&reply)));
    }
    let server_final = SaslStepReply::decode(&mut Reader::new(&reply))
        .ok()
        .filter(|r| r.complete)
        .and_then(|r| r.data)
        .ok_or_else(|| protocol("no complete server-final message"))?;
    let salted = waiting
        .verify(&server_final)
        .map_err(|e| scram_failure(host, user, &e))?;
    let was_cached = login.secret.salted.contains(&salted);
    if let (false, Some(side)) = (was_cached, side) {
        side.credentials.learned(host, user, &salted);
    }
    Ok(())
}

fn scram_failure(host: &str, user: &str, e: &ScramError) -> Failed {
    let failure = match e {
        ScramError::BadServerSignature => LoginFailure::BadServerSignature,
        ScramError::StaleSalted => LoginFailure::StaleCredentials,
        ScramError::ServerRefused(_) => LoginFailure::Rejected,
        _ => LoginFailure::Protocol,
    };
    (
        failure,
        format!("virtgate: the gateway's SASL login to host {host} as {user:?} failed: {e}"),
        format!("SCRAM with the host: {e}"),
    )
}

/// One call of the gateway's own, within `limit`: the reply's status and payload.
async fn host_call<S: AsyncRead + AsyncWrite + Unpin>(
    backend: &mut PacketStream<S>,
    procedure: u32,
    serial: u32,
    payload: &[u8],
    limit: Duration,
) -> Result<(Status, Vec<u8>), String> {
    match tokio::time::timeout(limit, call_host(backend, procedure, serial, payload)).await {
        Ok(Ok((header, payload))) => Ok((header.status, payload)),
        Ok(Err(HostCallError::Closed)) => Err("it closed the connection".into()),
        Ok(Err(HostCallError::Io)) => Err("the connection failed".into()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

fn error_text(payload: &[u8]) -> String {
    ErrorReply::decode(&mut Reader::new(payload))
        .ok()
        .and_then(|e| e.message)
        .unwrap_or_else(|| "an error without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_picks_scram_sha_256_then_512_and_nothing_else() {
        assert_eq!(choose("SCRAM-SHA-256"), Some(Mechanism::Sha256));
        assert_eq!(
            choose("SCRAM-SHA-512,SCRAM-SHA-256"),
            Some(Mechanism::Sha512).and(Some(Mechanism::Sha256))
        );
        assert_eq!(choose("PLAIN SCRAM-SHA-512"), Some(Mechanism::Sha512));
        assert_eq!(choose("PLAIN,ANONYMOUS,DIGEST-MD5,SCRAM-SHA-1"), None);
        assert_eq!(choose(""), None);
    }
}
