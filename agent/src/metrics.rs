//! The agent's own metrics, served on loopback (`agent.metrics_listen`): `/metrics`, `/healthz`.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// How a connection to the agent ended: the `result` label of
/// `virtgate_agent_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Relayed to libvirt until one side closed.
    Relayed,
    /// The relay was idle for `agent.idle_timeout`.
    IdleTimeout,
    /// An enrollment completed on it.
    Enrolled,
    /// A rotation completed on it.
    Rotated,
    /// The PAKE proof did not verify (wrong secret, or not on this TLS session).
    CheckFailed,
    /// The client asked for something this agent does not serve now (e.g. a relay before
    /// enrollment, an unknown secret generation), or the broker refused the enrollment.
    Refused,
    /// TLS failed: most often a client key that is not a pinned gateway key.
    TlsFailed,
    /// Closed after TLS without starting the check (the broker's probes do that).
    Abandoned,
    /// The local libvirt socket could not be reached.
    LibvirtUnreachable,
    /// Broken framing, a timeout, or I/O errors during the check.
    ProtocolError,
    /// Too many failed checks from its address in the last minute.
    RefusedSource,
    /// `agent.max_connections` reached.
    RefusedCapacity,
}

impl Ended {
    pub const ALL: [Ended; 12] = [
        Self::Relayed,
        Self::IdleTimeout,
        Self::Enrolled,
        Self::Rotated,
        Self::CheckFailed,
        Self::Refused,
        Self::TlsFailed,
        Self::Abandoned,
        Self::LibvirtUnreachable,
        Self::ProtocolError,
        Self::RefusedSource,
        Self::RefusedCapacity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relayed => "relayed",
            Self::IdleTimeout => "idle_timeout",
            Self::Enrolled => "enrolled",
            Self::Rotated => "rotated",
            Self::CheckFailed => "check_failed",
            Self::Refused => "refused",
            Self::TlsFailed => "tls_failed",
            Self::Abandoned => "abandoned",
            Self::LibvirtUnreachable => "libvirt_unreachable",
            Self::ProtocolError => "protocol_error",
            Self::RefusedSource => "refused_source",
            Self::RefusedCapacity => "refused_capacity",
        }
    }
}

#[derive(Clone)]
pub struct AgentMetrics {
    pub registry: Arc<Registry>,
    pub connections_active: IntGauge,
    pub connections: IntCounterVec,
    pub checks: IntCounterVec,
    pub check_duration: Histogram,
    pub enrolled: IntGauge,
    pub generation: IntGauge,
}

impl AgentMetrics {
    pub fn new() -> Result<AgentMetrics, prometheus::Error> {
        let registry = Arc::new(Registry::new());
        let connections_active =
            IntGauge::new("virtgate_agent_connections_active", "Connections open now.")?;
        let connections = IntCounterVec::new(
            Opts::new(
                "virtgate_agent_connections_total",
                "Connections to the agent by how they ended.",
            ),
            &["result"],
        )?;
        let checks = IntCounterVec::new(
            Opts::new(
                "virtgate_agent_checks_total",
                "PAKE checks of gateways and brokers (relay, rotate), by result (ok, failed).",
            ),
            &["result"],
        )?;
        let check_duration = Histogram::with_opts(
            HistogramOpts::new(
                "virtgate_agent_check_duration_seconds",
                "Time from the gateway's hello to the verdict.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0]),
        )?;
        let enrolled = IntGauge::new(
            "virtgate_agent_enrolled",
            "1 when the agent is enrolled (serving gateways), 0 while it waits for enrollment.",
        )?;
        let generation = IntGauge::new(
            "virtgate_agent_secret_generation",
            "Generation of the newest per-host secret registered (rises with each rotation).",
        )?;
        for c in [
            Box::new(connections_active.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections.clone()),
            Box::new(checks.clone()),
            Box::new(check_duration.clone()),
            Box::new(enrolled.clone()),
            Box::new(generation.clone()),
        ] {
            registry.register(c)?;
        }
        for e in Ended::ALL {
            connections.with_label_values(&[e.as_str()]);
        }
        for r in ["ok", "failed"] {
            checks.with_label_values(&[r]);
        }
        Ok(AgentMetrics {
            registry,
            connections_active,
            connections,
            checks,
            check_duration,
            enrolled,
            generation,
        })
    }

    pub fn ended(&self, e: Ended) {
        self.connections.with_label_values(&[e.as_str()]).inc();
    }
}

/// The agent's metrics endpoint: a few scrapers at once, no readiness (nothing waits on it).
pub(crate) fn endpoint(registry: Arc<Registry>) -> virtgate_listen::metrics::Endpoint {
    virtgate_listen::metrics::Endpoint {
        name: "agent metrics",
        registry,
        readiness: None,
        connections: 16,
        header_timeout: Duration::from_secs(5),
    }
}
