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
        let r = Registering(registry);
        let metrics = Self {
            connections_active: r.gauge(
                "virtgate_proxy_connections_active",
                "Client connections open now.",
            )?,
            connections_total: r.counters(
                "virtgate_proxy_connections_total",
                "Client connections by how they ended.",
                &["result"],
            )?,
            handshake_duration: r.histogram(
                "virtgate_proxy_handshake_duration_seconds",
                "Client TLS handshake duration.",
                CONNECT_BUCKETS,
            )?,
            auth_failures: r.counters(
                "virtgate_proxy_auth_failures_total",
                "Clients refused before any RPC, by stage and reason.",
                &["stage", "reason"],
            )?,
            rpc_calls: r.counters(
                "virtgate_proxy_rpc_calls_total",
                "RPC calls relayed, by host, program and procedure.",
                &["host", "program", "procedure"],
            )?,
            rpc_duration: r.register(HistogramVec::new(
                HistogramOpts::new(
                    "virtgate_proxy_rpc_duration_seconds",
                    "Call to reply time seen by the gateway, by host.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5,
                    10.0,
                ]),
                &["host"],
            )?)?,
            bytes: r.counters(
                "virtgate_proxy_bytes_total",
                "RPC bytes relayed, by host and direction (to_host, to_client).",
                &["host", "direction"],
            )?,
            backend_connect_duration: r.histogram(
                "virtgate_proxy_backend_connect_duration_seconds",
                "Time to reach a host: TCP (happy eyeballs), TLS and the confirmation byte.",
                CONNECT_BUCKETS,
            )?,
            protocol_errors: r.counters(
                "virtgate_proxy_protocol_errors_total",
                "Connections cut off for protocol violations, by side and reason.",
                &["side", "reason"],
            )?,
            calls_refused: r.counters(
                "virtgate_proxy_calls_refused_total",
                "Calls the gateway answered itself instead of relaying, by reason (reopen, auth, identity: the connection was closed; read_only, program).",
                &["reason"],
            )?,
            crl_next_update: r.register(prometheus::Gauge::new(
                "virtgate_proxy_crl_next_update_timestamp_seconds",
                "The earliest nextUpdate of proxy.crl_file, Unix seconds (0 without a CRL); past it the CRL is stale and revocations after it are unknown.",
            )?)?,
            // The agent check of hosts enrolled through `virtgate agent` (`session/secondary.rs`).
            secondary_checks: r.counters(
                "virtgate_proxy_secondary_checks_total",
                "Agent checks (the PAKE bound to the TLS session) by host and result: ok, failed (a proof did not verify: wrong secret or a TLS-terminating relay), refused (by the agent), no_secret, error.",
                &["host", "result"],
            )?,
            secondary_check_duration: r.histogram(
                "virtgate_proxy_secondary_check_duration_seconds",
                "Time of the agent check, from the gateway's hello to the agent's verdict.",
                &[
                    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
                ],
            )?,
            backend_login_failures: r.counters(
                "virtgate_proxy_backend_login_failures_total",
                "The gateway's own SASL logins to hosts that demand one (auth_tls = \"sasl\") which failed, by reason (no_credentials, rejected, stale_credentials, ...); the client got an error naming `virtgate hosts credentials`.",
                &["reason"],
            )?,
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

/// Buckets for connection set-up times: handshakes and reaching a host.
const CONNECT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Makes metrics and registers each into the registry as it is made.
struct Registering<'a>(&'a Registry);

impl Registering<'_> {
    fn register<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        collector: C,
    ) -> Result<C, prometheus::Error> {
        self.0.register(Box::new(collector.clone()))?;
        Ok(collector)
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.register(IntGauge::new(name, help)?)
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, prometheus::Error> {
        self.register(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        )?)
    }
}
