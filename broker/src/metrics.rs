//! Prometheus metrics. Per-host and per-certificate series are rebuilt from the inventory at
//! scrape time (only when it changed), so a forgotten host can never leave stale series behind.

use std::sync::Mutex;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::cert::{CertInfo, FindingKind};
use crate::inventory::Inventory;
use crate::model::HostState;
use crate::probe::ProbeErrorReason;

const CERT_LABELS: &[&str] = &[
    "host",
    "address",
    "role",
    "subject_cn",
    "issuer_cn",
    "serial",
    "sha256",
];

pub struct Metrics {
    registry: Registry,
    cert_not_after: GaugeVec,
    cert_not_before: GaugeVec,
    cert_findings: IntGaugeVec,
    hosts: IntGaugeVec,
    host_trust: IntGaugeVec,
    host_up: IntGaugeVec,
    host_state: IntGaugeVec,
    host_addresses: IntGaugeVec,
    pub probe_duration: Histogram,
    pub probe_errors: IntCounterVec,
    pub discovery_events: IntCounterVec,
    rendered_revision: Mutex<u64>,
    own: Mutex<Vec<(String, CertInfo)>>,
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`, … (Linux).
fn register_process(registry: &Registry) {
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");
}

/// Registers metrics on one registry; the definitions are static, so failures are bugs.
struct On<'a>(&'a Registry);

impl On<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metric: prometheus::Result<M>,
    ) -> M {
        let metric = metric.expect("valid metric");
        self.0
            .register(Box::new(metric.clone()))
            .expect("unique metric");
        metric
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let on = On(&registry);
        let (gauge, int_gauge, counter) = (
            |n: &str, h: &str, l: &[&str]| on.add(GaugeVec::new(Opts::new(n, h), l)),
            |n: &str, h: &str, l: &[&str]| on.add(IntGaugeVec::new(Opts::new(n, h), l)),
            |n: &str, h: &str, l: &[&str]| on.add(IntCounterVec::new(Opts::new(n, h), l)),
        );
        let cert_not_after = gauge(
            "virtgate_cert_not_after_timestamp_seconds",
            "Certificate notAfter, Unix seconds, per certificate a host presents (and virtgate's own).",
            CERT_LABELS,
        );
        let cert_not_before = gauge(
            "virtgate_cert_not_before_timestamp_seconds",
            "Certificate notBefore, Unix seconds.",
            CERT_LABELS,
        );
        let cert_findings = int_gauge(
            "virtgate_cert_findings",
            "Number of a host's certificates with this finding; 1 for the host-level findings changed and bypassable (see docs/broker.md for the vocabulary).",
            &["host", "finding"],
        );
        let hosts = int_gauge(
            "virtgate_hosts",
            "Hosts in the inventory by state.",
            &["state"],
        );
        let host_trust = int_gauge(
            "virtgate_host_trust",
            "1 for each host's current trust state.",
            &["host", "state"],
        );
        let host_up = int_gauge(
            "virtgate_host_up",
            "1 if the host's last probe reached any address, else 0.",
            &["host"],
        );
        let host_state = int_gauge(
            "virtgate_host_state",
            "1 for each host's current state (up, down, absent, unknown).",
            &["host", "state"],
        );
        let host_addresses = int_gauge(
            "virtgate_host_addresses",
            "A host's addresses by the result of their last probe (ok, failed): a host up on some addresses only has both.",
            &["host", "result"],
        );
        register_process(&registry);
        let probe_duration = on.add(Histogram::with_opts(
            HistogramOpts::new(
                "virtgate_probe_duration_seconds",
                "Time to connect and complete a TLS handshake with one address (the certificate probe, and each handshake of the bypass check).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        ));
        let probe_errors = counter(
            "virtgate_probe_errors_total",
            "Failed probes of one address, by reason.",
            &["reason"],
        );
        for reason in ProbeErrorReason::ALL {
            probe_errors.with_label_values(&[reason.as_str()]);
        }
        let discovery_events = counter(
            "virtgate_discovery_events_total",
            "mDNS discovery events by kind.",
            &["kind"],
        );
        for kind in ["appeared", "updated", "removed"] {
            discovery_events.with_label_values(&[kind]);
        }
        let build_info = int_gauge(
            "virtgate_build_info",
            "Always 1; the version label says which virtgate runs.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Self {
            registry,
            cert_not_after,
            cert_not_before,
            cert_findings,
            hosts,
            host_trust,
            host_up,
            host_state,
            host_addresses,
            probe_duration,
            probe_errors,
            discovery_events,
            rendered_revision: Mutex::new(0),
            own: Mutex::new(Vec::new()),
        }
    }

    /// virtgate's own certificates (role `proxy_server`, `proxy_client` or `ca`), exported with
    /// `host="virtgate"` so their expiry is watched like any host's.
    pub fn set_own_certificates(&self, certs: Vec<(String, CertInfo)>) {
        *self.own.lock().expect("metrics lock poisoned") = certs;
        *self
            .rendered_revision
            .lock()
            .expect("metrics lock poisoned") = 0;
    }

    /// virtgate's own certificates, as set by [`Metrics::set_own_certificates`].
    pub fn own_certificates(&self) -> Vec<(String, CertInfo)> {
        self.own.lock().expect("metrics lock poisoned").clone()
    }

    /// Both validity series of one certificate, under the same labels.
    fn set_certificate(&self, labels: &[&str], cert: &CertInfo) {
        self.cert_not_after
            .with_label_values(labels)
            .set(cert.not_after as f64);
        self.cert_not_before
            .with_label_values(labels)
            .set(cert.not_before as f64);
    }

    fn refresh(&self, inventory: &Inventory) {
        let revision = inventory.revision();
        let mut rendered = self
            .rendered_revision
            .lock()
            .expect("metrics lock poisoned");
        if *rendered == revision {
            return;
        }
        for g in [&self.cert_not_after, &self.cert_not_before] {
            g.reset();
        }
        for g in [
            &self.cert_findings,
            &self.host_trust,
            &self.host_up,
            &self.hosts,
            &self.host_state,
            &self.host_addresses,
        ] {
            g.reset();
        }
        for state in HostState::ALL {
            self.hosts.with_label_values(&[state.as_str()]).set(0);
        }
        for host in inventory.hosts() {
            self.hosts.with_label_values(&[host.state.as_str()]).inc();
            self.host_trust
                .with_label_values(&[&host.name, host.trust.as_str()])
                .set(1);
            self.host_state
                .with_label_values(&[&host.name, host.state.as_str()])
                .set(1);
            if !host.endpoints.is_empty() {
                let failed = host.endpoints.iter().filter(|e| e.error.is_some()).count();
                let ok = host.endpoints.len() - failed;
                for (result, n) in [("ok", ok), ("failed", failed)] {
                    self.host_addresses
                        .with_label_values(&[&host.name, result])
                        .set(n as i64);
                }
            }
            if host.state != HostState::Absent && host.state != HostState::Unknown {
                self.host_up
                    .with_label_values(&[&host.name])
                    .set(i64::from(host.state == HostState::Up));
            }
            for endpoint in &host.endpoints {
                let address = endpoint.address.to_string();
                for cert in &endpoint.chain {
                    let role = if cert.position == 0 {
                        "host"
                    } else {
                        "host_chain"
                    };
                    self.set_certificate(
                        &[
                            host.name.as_str(),
                            &address,
                            role,
                            &cert.subject_cn,
                            &cert.issuer_cn,
                            &cert.serial,
                            &cert.sha256,
                        ],
                        cert,
                    );
                }
            }
            for kind in FindingKind::ALL {
                let n = host.findings.iter().filter(|f| f.kind == kind).count();
                if n > 0 {
                    self.cert_findings
                        .with_label_values(&[&host.name, kind.as_str()])
                        .set(n as i64);
                }
            }
        }
        for (role, cert) in self.own.lock().expect("metrics lock poisoned").iter() {
            self.set_certificate(
                &[
                    "virtgate",
                    "",
                    role.as_str(),
                    &cert.subject_cn,
                    &cert.issuer_cn,
                    &cert.serial,
                    &cert.sha256,
                ],
                cert,
            );
        }
        *rendered = revision;
    }

    /// The registry, so other parts of the process (the proxy in `virtgate up`) export through
    /// the same `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format (0.0.4).
    pub fn render(&self, inventory: &Inventory) -> String {
        self.refresh(inventory);
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
