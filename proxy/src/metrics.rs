//! The proxy's metrics, registered into a given registry (the broker's in `virtgate up`).

use crate::session::ConnectionResult;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct ProxyMetrics {
    pub connections_active: IntGauge,
    pub connections_total: IntCounterVec,
    pub handshake_duration: Histogram,
    pub auth_failures: IntCounterVec,
    pub rpc_calls: IntCounterVec,
    pub rpc_duration: HistogramVec,
    pub bytes: IntCounterVec,
    pub backend_connect_duration: Histogram,
    pub protocol_errors: IntCounterVec,
    pub calls_refused: IntCounterVec,
    pub crl_next_update: prometheus::Gauge,
    pub secondary_checks: IntCounterVec,
    pub secondary_check_duration: Histogram,
    /// The gateway's own SASL logins to hosts that failed, by reason.
    pub backend_login_failures: IntCounterVec,
}

impl ProxyMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connections_active = IntGauge::new(
            "virtgate_proxy_connections_active",
            "Client connections open now.",
        )?;
        let connections_total = IntCounterVec::new(
            Opts::new(
                "virtgate_proxy_connections_total",
                "Client connections by how they ended.",
            ),
            &["result"],
        )?;
        let handshake_duration = Histogram::with_opts(
            HistogramOpts::new(
                "virtgate_proxy_handshake_duration_seconds",
                "Client TLS handshake duration.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "virtgate_proxy_auth_failures_total",
                "Clients refused before any RPC, by stage and reason.",
            ),
            &["stage", "reason"],
        )?;
        let rpc_calls = IntCounterVec::new(
            Opts::new(
                "virtgate_proxy_rpc_calls_total",
                "RPC calls relayed, by host, program and procedure.",
            ),
            &["host", "program", "procedure"],
        )?;
        let rpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "virtgate_proxy_rpc_duration_seconds",
                "Call to reply time seen by the gateway, by host.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0,
            ]),
            &["host"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "virtgate_proxy_bytes_total",
                "RPC bytes relayed, by host and direction (to_host, to_client).",
            ),
            &["host", "direction"],
        )?;
        let collectors: [Box<dyn prometheus::core::Collector>; 7] = [
            Box::new(connections_active.clone()),
            Box::new(connections_total.clone()),
            Box::new(handshake_duration.clone()),
            Box::new(auth_failures.clone()),
            Box::new(rpc_calls.clone()),
            Box::new(rpc_duration.clone()),
            Box::new(bytes.clone()),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        let (backend_connect_duration, protocol_errors) = path_metrics(registry)?;
        let (calls_refused, crl_next_update) = guard_metrics(registry)?;
        let (secondary_checks, secondary_check_duration) = secondary_metrics(registry)?;
        let backend_login_failures = login_metrics(registry)?;
        let metrics = Self {
            connections_active,
            connections_total,
            handshake_duration,
            auth_failures,
            rpc_calls,
            rpc_duration,
            bytes,
            backend_connect_duration,
            protocol_errors,
            calls_refused,
            crl_next_update,
            secondary_checks,
            secondary_check_duration,
            backend_login_failures,
        };
        metrics.initialise_labels();
        Ok(metrics)
    }

    /// Every fixed label set starts at 0, so dashboards and alerts see the series before the
    /// first event.
    fn initialise_labels(&self) {
        for reason in crate::calls::RefusedCall::ALL {
            self.calls_refused.with_label_values(&[reason.as_str()]);
        }
        for r in ConnectionResult::ALL {
            self.connections_total.with_label_values(&[r.as_str()]);
        }
        for (stage, reason) in [
            ("tls", "handshake_failed"),
            ("dn", "not_allowed"),
            ("policy", "denied"),
        ] {
            self.auth_failures.with_label_values(&[stage, reason]);
        }
        for failure in crate::session::LoginFailure::ALL {
            self.auth_failures
                .with_label_values(&["sasl", failure.as_str()]);
        }
        for failure in crate::session::HostLoginFailure::ALL {
            self.backend_login_failures
                .with_label_values(&[failure.as_str()]);
        }
        for side in ["client", "host"] {
            for reason in ["length_too_small", "length_too_large", "stalled"] {
                self.protocol_errors.with_label_values(&[side, reason]);
            }
        }
    }

    pub fn bytes_counter(&self, host: &str, direction: &str) -> IntCounter {
        self.bytes.with_label_values(&[host, direction])
    }
}

/// The gateway's own SASL logins to hosts, registered into `registry`.
fn login_metrics(registry: &Registry) -> Result<IntCounterVec, prometheus::Error> {
    let backend_login_failures = IntCounterVec::new(
        Opts::new(
            "virtgate_proxy_backend_login_failures_total",
            "The gateway's own SASL logins to hosts that demand one (auth_tls = \"sasl\") which failed, by reason (no_credentials, rejected, stale_credentials, ...); the client got an error naming `virtgate hosts credentials`.",
        ),
        &["reason"],
    )?;
    registry.register(Box::new(backend_login_failures.clone()))?;
    Ok(backend_login_failures)
}

/// The calls the gateway refuses itself, and the freshness of its CRL.
/// The backend connect time and the protocol errors of either side.
fn path_metrics(registry: &Registry) -> Result<(Histogram, IntCounterVec), prometheus::Error> {
    let backend_connect_duration = Histogram::with_opts(
        HistogramOpts::new(
            "virtgate_proxy_backend_connect_duration_seconds",
            "Time to reach a host: TCP (happy eyeballs), TLS and the confirmation byte.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ]),
    )?;
    let protocol_errors = IntCounterVec::new(
        Opts::new(
            "virtgate_proxy_protocol_errors_total",
            "Connections cut off for protocol violations, by side and reason.",
        ),
        &["side", "reason"],
    )?;
    registry.register(Box::new(backend_connect_duration.clone()))?;
    registry.register(Box::new(protocol_errors.clone()))?;
    Ok((backend_connect_duration, protocol_errors))
}

fn guard_metrics(
    registry: &Registry,
) -> Result<(IntCounterVec, prometheus::Gauge), prometheus::Error> {
    let calls_refused = IntCounterVec::new(
            Opts::new(
                "virtgate_proxy_calls_refused_total",
                "Calls the gateway answered itself instead of relaying, by reason (reopen, auth, identity: the connection was closed; read_only, program).",
            ),
            &["reason"],
        )?;
    registry.register(Box::new(calls_refused.clone()))?;
    let crl_next_update = prometheus::Gauge::new(
            "virtgate_proxy_crl_next_update_timestamp_seconds",
            "The earliest nextUpdate of proxy.crl_file, Unix seconds (0 without a CRL); past it the CRL is stale and revocations after it are unknown.",
        )?;
    registry.register(Box::new(crl_next_update.clone()))?;
    Ok((calls_refused, crl_next_update))
}

/// The agent check of hosts enrolled through `virtgate agent` (`session/secondary.rs`).
fn secondary_metrics(registry: &Registry) -> Result<(IntCounterVec, Histogram), prometheus::Error> {
    let checks = IntCounterVec::new(
        Opts::new(
            "virtgate_proxy_secondary_checks_total",
            "Agent checks (the PAKE bound to the TLS session) by host and result: ok, failed (a proof did not verify: wrong secret or a TLS-terminating relay), refused (by the agent), no_secret, error.",
        ),
        &["host", "result"],
    )?;
    registry.register(Box::new(checks.clone()))?;
    let duration = Histogram::with_opts(
        HistogramOpts::new(
            "virtgate_proxy_secondary_check_duration_seconds",
            "Time of the agent check, from the gateway's hello to the agent's verdict.",
        )
        .buckets(vec![
            0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
        ]),
    )?;
    registry.register(Box::new(duration.clone()))?;
    Ok((checks, duration))
}
