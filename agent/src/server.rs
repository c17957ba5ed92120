//! The agent's two ways of running — waiting for enrollment, and serving gateways once
//! enrolled — over one listener, one announcement and one metrics server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use virtgate_discovery::{AdvertiseConfig, Advertiser, InterfaceSelector};
use virtgate_pake::{ServerKeys, Token};
use virtgate_pki::Pin;

use crate::config::AgentConfig;
use crate::limiter::Limiter;
use crate::metrics::{AgentMetrics, Ended};
use crate::state::{Enrollment, State};
use crate::tls::{server_config, GatewayPins};
use crate::AgentError;

/// TXT keys of an agent's announcement (informational: nothing in TXT is trusted).
pub const TXT_AGENT: &str = "virtgate-agent";
pub const TXT_SPKI: &str = "spki";
pub const TXT_ENROLL: &str = "enroll";

/// Connections the kernel queues before the agent accepts them (gateways connect a few at a time).
const LISTEN_BACKLOG: i32 = 256;

/// What the caller (the binary) adds to the configuration.
pub struct Options {
    /// The short host name announced when `agent.hostname` is not set and the agent is not
    /// enrolled yet (enrolled, it announces the name it was enrolled as).
    pub default_hostname: String,
    /// Interfaces to announce on, when announcing.
    pub interfaces: Option<InterfaceSelector>,
}

/// What an enrollment left.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub host: String,
    pub gateway_pins: Vec<Pin>,
    /// This agent's own key pin, which the broker now pins.
    pub pin: Pin,
}

/// Shared by every connection.
pub(crate) struct Service {
    pub config: AgentConfig,
    pub tls: TlsAcceptor,
    pub pins: Arc<GatewayPins>,
    pub keys: ServerKeys,
    pub state: State,
    pub metrics: AgentMetrics,
    pub limiter: Limiter,
    pub mode: Mode,
}

pub(crate) enum Mode {
    /// Waiting to be enrolled with `token`; the outcome goes to `done`.
    Enrolling {
        token: Token,
        done: mpsc::Sender<Result<Enrollment, String>>,
    },
    /// Enrolled: relays and rotations. Rotations change it.
    Serving { enrollment: Mutex<Enrollment> },
}

struct Running {
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    advertiser: Option<Advertiser>,
}

impl Running {
    /// Binds the listeners and the metrics server, starts announcing.
    async fn start(
        service: Service,
        options: Options,
        txt: BTreeMap<String, String>,
        shutdown: CancellationToken,
    ) -> Result<Running, AgentError> {
        let service = Arc::new(service);
        let mut tasks = JoinSet::new();
        let slots = Arc::new(Semaphore::new(service.config.max_connections));
        let mut port = None;
        for &addr in &service.config.listen {
            let listener = virtgate_listen::bind(addr, LISTEN_BACKLOG)
                .map_err(|source| AgentError::Listen { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| AgentError::Listen { addr, source })?;
            port.get_or_insert(local.port());
            info!(listen = %local, "agent listening");
            tasks.spawn(accept_loop(
                listener,
                service.clone(),
                slots.clone(),
                shutdown.clone(),
            ));
        }
        let addr = service.config.metrics_listen;
        let metrics = TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Listen { addr, source })?;
        tasks.spawn(virtgate_listen::metrics::serve(
            metrics,
            crate::metrics::endpoint(service.metrics.registry.clone()),
            shutdown.clone(),
        ));
        let advertiser = match (service.config.announce, options.interfaces) {
            (true, Some(selector)) => {
                let config = AdvertiseConfig {
                    hostname: service.config.hostname.clone(),
                    port: port.unwrap_or(virtgate_discovery::DEFAULT_LIBVIRT_TLS_PORT),
                    transport: "tls".into(),
                    auth: "agent".into(),
                    txt,
                };
                let default = options.default_hostname;
                let started = tokio::task::spawn_blocking(move || {
                    Advertiser::start(&config, &default, selector)
                })
                .await
                .map_err(|e| AgentError::Tls(format!("announcement task: {e}")))??;
                Some(started)
            }
            _ => None,
        };
        Ok(Running {
            shutdown,
            tasks,
            advertiser,
        })
    }

    async fn stop(mut self) {
        if let Some(a) = self.advertiser.take() {
            let _ = tokio::task::spawn_blocking(move || a.shutdown()).await;
        }
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: Arc<Service>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            service.metrics.ended(Ended::RefusedCapacity);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (service, shutdown) = (service.clone(), shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            crate::connection::serve(&service, tcp, peer, shutdown).await;
        });
    }
    connections.shutdown().await;
}

fn txt(identity_pin: Pin, token: Option<&Token>) -> BTreeMap<String, String> {
    let mut txt = BTreeMap::new();
    txt.insert(TXT_AGENT.into(), "1".into());
    txt.insert(TXT_SPKI.into(), format!("sha256:{identity_pin}"));
    if let Some(token) = token {
        txt.insert(TXT_ENROLL.into(), token.id.clone());
    }
    txt
}

fn hostname(config: &AgentConfig, options: &Options) -> String {
    config
        .hostname
        .clone()
        .unwrap_or_else(|| options.default_hostname.clone())
}

/// Waits to be enrolled with `token` by a broker presenting one of `gateway_pins`; returns
/// once an enrollment succeeded (the agent is then ready for [`serve`]), or with the reason it
/// failed, or `None`-like `Err` on `shutdown`.
pub async fn enroll(
    config: &AgentConfig,
    options: Options,
    token: Token,
    gateway_pins: Vec<Pin>,
    shutdown: CancellationToken,
) -> Result<Enrolled, AgentError> {
    if gateway_pins.is_empty() {
        return Err(AgentError::NoGatewayPins);
    }
    let state = State::open(&config.state_dir)?;
    let identity = state.identity(&hostname(config, &options))?;
    let keys = state.server_keys()?;
    if let Some(previous) = state.enrollment()? {
        warn!(host = %previous.host, "this agent is enrolled already; a successful enrollment replaces that one");
    }
    let pins = GatewayPins::new(gateway_pins);
    let tls = TlsAcceptor::from(server_config(&identity, pins.clone())?);
    let metrics = AgentMetrics::new()?;
    let txt = txt(identity.pin, Some(&token));
    let (done_tx, mut done_rx) = mpsc::channel(1);
    info!(token = %token.id, pin = %identity.pin, "waiting for enrollment");
    let service = Service {
        limiter: Limiter::new(config.max_failed_checks_per_minute),
        config: config.clone(),
        tls,
        pins,
        keys,
        state,
        metrics,
        mode: Mode::Enrolling {
            token,
            done: done_tx,
        },
    };
    let running = Running::start(service, options, txt, shutdown.child_token()).await?;
    let outcome = tokio::select! {
        outcome = done_rx.recv() => outcome,
        () = shutdown.cancelled() => None,
    };
    running.stop().await;
    match outcome {
        Some(Ok(enrollment)) => Ok(Enrolled {
            host: enrollment.host,
            gateway_pins: enrollment.gateway_pins,
            pin: identity.pin,
        }),
        Some(Err(why)) => Err(AgentError::Enrollment(why)),
        None => Err(AgentError::Enrollment(
            "stopped before a broker enrolled this agent".into(),
        )),
    }
}

/// Serves gateways until `shutdown`: pinned gateway keys, the check on every connection, then
/// the relay to `agent.libvirt_socket`.
pub async fn serve(
    config: &AgentConfig,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let state = State::open(&config.state_dir)?;
    let Some(enrollment) = state.enrollment()? else {
        return Err(AgentError::NotEnrolled);
    };
    // Enrolled, the agent is known by the name it was enrolled as: announcing the machine's
    // name instead would make the broker see the host leave and a stranger with its key appear.
    let options = Options {
        default_hostname: enrollment.host.clone(),
        ..options
    };
    let identity = state.identity(&hostname(config, &options))?;
    let keys = state.server_keys()?;
    let pins = GatewayPins::new(enrollment.gateway_pins.clone());
    let tls = TlsAcceptor::from(server_config(&identity, pins.clone())?);
    let metrics = AgentMetrics::new()?;
    metrics.enrolled.set(1);
    metrics
        .generation
        .set(i64::from(enrollment.current_generation()));
    if !config.libvirt_socket.exists() {
        warn!(socket = %config.libvirt_socket.display(), "the libvirt socket does not exist (yet); gateways get an error until libvirt runs (modular daemons: set agent.libvirt_socket to virtqemud's socket)");
    }
    info!(host = %enrollment.host, pin = %identity.pin, gateways = enrollment.gateway_pins.len(), generation = enrollment.current_generation(), libvirt = %config.libvirt_socket.display(), "agent started");
    let service = Service {
        limiter: Limiter::new(config.max_failed_checks_per_minute),
        config: config.clone(),
        tls,
        pins,
        keys,
        state,
        metrics,
        mode: Mode::Serving {
            enrollment: Mutex::new(enrollment),
        },
    };
    let running = Running::start(
        service,
        options,
        txt(identity.pin, None),
        shutdown.child_token(),
    )
    .await?;
    shutdown.cancelled().await;
    running.stop().await;
    Ok(())
}

/// The libvirt socket path, for messages.
pub(crate) fn socket_path(service: &Service) -> &PathBuf {
    &service.config.libvirt_socket
}
