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
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(connections_total.clone()))?;
        registry.register(Box::new(handshake_duration.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(rpc_calls.clone()))?;
        registry.register(Box::new(rpc_duration.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(backend_connect_duration.clone()))?;
        registry.register(Box::new(protocol_errors.clone()))?;
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
        };
        metrics.initialise_labels();
        Ok(metrics)
    }

    /// Every fixed label set starts at 0, so dashboards and alerts see the series before the
    /// first event.
    fn initialise_labels(&self) {
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
