//! Step 4, for a host enrolled through `virtgate agent`: after the TLS handshake (the agent's
//! key pinned) and before anything of the client's reaches the host, the gateway proves the
//! host's secret with the PAKE of `virtgate-pake`, bound to this TLS session. A party that
//! terminates TLS in between, or holds the agent's key or the gateway's key without the
//! secret, cannot pass it. The secret comes from `proxy.agent_secret_dir/<host>`, read at each
//! connect, so a rotated secret is used at once. One attempt per client connection, never a
//! retry: a failing agent costs one exchange per client, and the client gets the reason.

use std::path::Path;
use std::time::Duration;

use tokio::time::{timeout_at, Instant};
use virtgate_pake::{driver, Binding, HostSecret, PakeError, Purpose};

use super::admit::Admitted;
use super::backend::Backend;
use super::outcome::{ConnectionResult, Refusal};
use super::Gateway;
use crate::directory::Secondary;
use crate::metrics::ProxyMetrics;

/// How a check ended: the `result` label of `virtgate_proxy_secondary_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// The agent accepted the proof and proved its record.
    Ok,
    /// A proof did not verify: another secret on one side, or not one TLS session (a relay).
    Failed,
    /// The agent refused (a stale secret generation, libvirt down, our key not enrolled).
    Refused,
    /// The gateway has no secret for the host (`proxy.agent_secret_dir`).
    NoSecret,
    /// I/O, framing or the time budget.
    Error,
}

impl CheckResult {
    pub const ALL: [CheckResult; 5] = [
        Self::Ok,
        Self::Failed,
        Self::Refused,
        Self::NoSecret,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Refused => "refused",
            Self::NoSecret => "no_secret",
            Self::Error => "error",
        }
    }
}

/// A check to make on the backend connection, with what it needs.
pub(crate) struct Check {
    host: String,
    secret: HostSecret,
    metrics: ProxyMetrics,
}

/// The check `admitted` needs, with its secret read; `None` for hosts without one.
pub(crate) fn prepare(gateway: &Gateway, admitted: &Admitted) -> Result<Option<Check>, Refusal> {
    let Some(Secondary::AgentPake) = admitted.secondary else {
        return Ok(None);
    };
    let host = &admitted.host;
    let metrics = &gateway.metrics;
    let secret = read_secret(gateway.config.agent_secret_dir.as_deref(), host).map_err(|why| {
        count(metrics, host, CheckResult::NoSecret, None);
        refusal(host, &why)
    })?;
    Ok(Some(Check {
        host: host.clone(),
        secret,
        metrics: metrics.clone(),
    }))
}

fn read_secret(dir: Option<&Path>, host: &str) -> Result<HostSecret, String> {
    let Some(dir) = dir else {
        return Err("it is enrolled through its agent, but this gateway has no proxy.agent_secret_dir to read its secret from (`virtgate up` uses <broker.data_dir>/agent-secrets; docs/agent.md)".into());
    };
    if !HostSecret::is_file_name(host) {
        return Err(format!("{host:?} cannot name a secret file"));
    }
    let path = dir.join(host);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!("the gateway has no readable secret for it at {} ({e}); the broker writes it at enrollment (docs/agent.md)", path.display())
    })?;
    HostSecret::parse(&text).ok_or_else(|| {
        format!(
            "{} is not a host secret file; restore it from the broker's agent-secrets directory",
            path.display()
        )
    })
}

fn refusal(host: &str, why: &str) -> Refusal {
    Refusal::no_connect(
        ConnectionResult::BackendRejected,
        format!("virtgate: host {host} failed the agent check: {why}"),
        format!("agent check: {why}"),
    )
}

fn count(metrics: &ProxyMetrics, host: &str, result: CheckResult, took: Option<Duration>) {
    // The first check of a host creates its series for every result, so rates and alerts see
    // zeros instead of nothing.
    for r in CheckResult::ALL {
        metrics
            .secondary_checks
            .with_label_values(&[host, r.as_str()]);
    }
    metrics
        .secondary_checks
        .with_label_values(&[host, result.as_str()])
        .inc();
    if let Some(took) = took {
        metrics.secondary_check_duration.observe(took.as_secs_f64());
    }
}

impl Check {
    /// Proves the host's secret on `tls` by `deadline`; a refusal names the host and reason.
    pub(crate) async fn run(&self, tls: &mut Backend, deadline: Instant) -> Result<(), Refusal> {
        let started = Instant::now();
        let proved = match Binding::of(tls.get_ref().1) {
            Ok(binding) => {
                let secret = &self.secret;
                let proof = driver::prove(
                    tls,
                    Purpose::Relay,
                    secret.generation,
                    &secret.secret,
                    &binding,
                );
                timeout_at(deadline, proof)
                    .await
                    .unwrap_or_else(|_| Err(PakeError::Protocol("no answer in time".into())))
            }
            Err(e) => Err(e),
        };
        let (result, why) = match proved {
            Ok(()) => (CheckResult::Ok, None),
            Err(PakeError::ProofFailed) => (
                CheckResult::Failed,
                Some("the PAKE proof did not verify: the gateway's secret for this host is not the one the agent enrolled, or something terminates TLS between the gateway and the agent".to_string()),
            ),
            Err(PakeError::Refused(why)) => (CheckResult::Refused, Some(why)),
            Err(PakeError::Io(e)) if alert(&e) => (
                CheckResult::Refused,
                Some("the agent refused the gateway's key: it is not among the gateway keys the agent was enrolled with (add it with broker.agent_gateway_pins and `virtgate enroll --rotate HOST`)".to_string()),
            ),
            Err(e) => (CheckResult::Error, Some(e.to_string())),
        };
        count(&self.metrics, &self.host, result, Some(started.elapsed()));
        match why {
            None => Ok(()),
            Some(why) => Err(refusal(&self.host, &why)),
        }
    }
}

/// Whether an I/O error is the peer's TLS alert (the agent refusing our certificate shows as
/// one on the first read, TLS 1.3 finishing the client's handshake first).
fn alert(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::AlertReceived(_)))
}
