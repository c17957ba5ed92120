//! Enrolling hosts through `virtgate agent`, and rotating their secrets.
//!
//! `virtgate enroll HOST` issues a one-time token (kept as an OPAQUE record, never the secret)
//! and prints the command to run on the host. The broker then finds the agent — announcing the
//! token's id in mDNS TXT under HOST's name, or at the address given — connects with its client
//! identity (the gateway's backend key, which the agent pins from `--gateway-pin`), and runs the
//! token's PAKE bound to that TLS session. On success it registers a fresh per-host secret on
//! the agent (which keeps only its record), writes the secret for the gateways
//! (`agent-secrets/HOST`, 0600), pins the agent's key as `enrolled` and spends the token.
//! Agents waiting with a token the broker will not take (unknown, expired, revoked, spent, or
//! for another host) are told why, so both sides say what went wrong.

mod exchange;
pub mod secrets;
pub mod tokens;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use virtgate_api::{
    EnrollRequest, EnrollResponse, Enrollment, EnrollmentState, Host, RotateResponse, TrustState,
};
use virtgate_pake::{HostSecret, Secret, Settings};
use virtgate_pki::Pin;

pub use exchange::{ExchangeError, Identity};
use secrets::SecretStore;
use tokens::{TokenError, TokenStore};

use crate::inventory::Inventory;

/// A token's life when none is asked for.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The longest life a token may have.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86400);
/// Budget of one exchange with an agent.
const EXCHANGE_BUDGET: Duration = Duration::from_secs(10);
/// Exchanges with agents at once.
const CONCURRENT: usize = 8;
/// How long after a token ends agents at its `--address` are told why.
const REFUSE_FOR: Duration = Duration::from_secs(86400);
/// The TXT key an agent announces its waiting token's id under.
pub const TXT_ENROLL: &str = "enroll";

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("the broker has no client identity to enroll agents with: set broker.client_cert_file and broker.client_key_file to the gateway's backend identity (`virtgate up` does)")]
    NoIdentity,
    #[error(
        "{0:?} is not a host name an agent can be enrolled as (letters, digits, '-', '.', '_')"
    )]
    BadHost(String),
    #[error("{0:?} is not an address: use ADDR or ADDR:PORT, e.g. 10.0.0.5 or [fd00::5]:16514")]
    BadAddress(String),
    #[error("ttl must be between 1 s and {max:?}", max = MAX_TTL)]
    BadTtl,
    #[error("host {0} is not enrolled through an agent; `virtgate hosts` shows its trust")]
    NotEnrolled(String),
    #[error("the broker holds no secret for {0} (agent-secrets/{0} is missing): enroll it again with `virtgate enroll {0}`")]
    NoSecret(String),
    #[error("no address of {host} took the rotation: {why}")]
    Unreachable { host: String, why: String },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot write the secret of {host}: {source}; check <broker.data_dir>/agent-secrets")]
    Secret {
        host: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
}

/// The broker's enrollment service: tokens, secrets, and the worker that finds agents.
pub struct Enrollments {
    tokens: Mutex<TokenStore>,
    secrets: SecretStore,
    inventory: Arc<Inventory>,
    identity: Option<Arc<Identity>>,
    /// Gateway keys agents accept besides the broker's own (`broker.agent_gateway_pins`).
    extra_pins: Vec<Pin>,
}

impl Enrollments {
    pub fn new(
        tokens: TokenStore,
        secrets: SecretStore,
        inventory: Arc<Inventory>,
        identity: Option<Identity>,
        extra_pins: Vec<Pin>,
    ) -> Enrollments {
        Enrollments {
            tokens: Mutex::new(tokens),
            secrets,
            inventory,
            identity: identity.map(Arc::new),
            extra_pins,
        }
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, TokenStore> {
        self.tokens.lock().expect("token store poisoned")
    }

    /// Every gateway key agents are to accept: the broker's own, then the configured ones.
    pub fn gateway_pins(&self) -> Vec<Pin> {
        let mut pins: Vec<Pin> = self.identity.iter().map(|i| i.pin).collect();
        for p in &self.extra_pins {
            if !pins.contains(p) {
                pins.push(*p);
            }
        }
        pins
    }

    /// Issues a token; the answer is the only place its secret ever appears.
    pub fn create(&self, request: &EnrollRequest) -> Result<EnrollResponse, EnrollError> {
        if self.identity.is_none() {
            return Err(EnrollError::NoIdentity);
        }
        let host = request
            .host
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if !HostSecret::is_file_name(&host) {
            return Err(EnrollError::BadHost(request.host.clone()));
        }
        let ttl = request.ttl_seconds.map_or(DEFAULT_TTL, Duration::from_secs);
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(EnrollError::BadTtl);
        }
        let address = match &request.address {
            Some(a) => Some(parse_address(a)?.to_string()),
            None => None,
        };
        let now = self.inventory.now();
        let expires_at = now + ttl.as_secs() as i64;
        let token = self.tokens().issue(&host, address, now, expires_at)?;
        let gateway_pins = self.gateway_pins();
        let pins: String = gateway_pins
            .iter()
            .map(|p| format!(" --gateway-pin sha256:{p}"))
            .collect();
        // The agent announces itself by this name, which is how the broker finds it (mDNS
        // names are one label: a host named by a dotted name is found with --address).
        let name = if host.contains('.') {
            String::new()
        } else {
            format!(" --hostname {host}")
        };
        let command = format!(
            "virtgate agent --enroll {}{pins}{name}",
            token.reveal().as_str()
        );
        info!(host = %host, token = %token.id, expires_at, "enrollment token issued");
        Ok(EnrollResponse {
            id: token.id.clone(),
            token: token.reveal().to_string(),
            host,
            expires_at,
            gateway_pins,
            command,
        })
    }

    pub fn list(&self) -> Vec<Enrollment> {
        let now = self.inventory.now();
        self.tokens().all().iter().map(|t| t.view(now)).collect()
    }

    pub fn revoke(&self, id: &str) -> Result<Enrollment, EnrollError> {
        let now = self.inventory.now();
        let view = self.tokens().revoke(id, now, "revoked by an operator")?;
        info!(token = %id, host = %view.host, "enrollment token revoked");
        Ok(view)
    }

    /// Replaces the per-host secret of an enrolled host over a connection the current secret
    /// authenticates, and gives the agent today's gateway keys.
    pub async fn rotate(&self, name: &str) -> Result<RotateResponse, EnrollError> {
        let identity = self.identity.clone().ok_or(EnrollError::NoIdentity)?;
        let host = self
            .inventory
            .host(name)
            .ok_or_else(|| crate::inventory::InventoryError::UnknownHost(name.into()))?;
        let (true, TrustState::Enrolled, Some(pin)) = (host.agent, host.trust, host.pin) else {
            return Err(EnrollError::NotEnrolled(name.into()));
        };
        let current = self
            .secrets
            .read(&host.name)
            .ok_or_else(|| EnrollError::NoSecret(host.name.clone()))?;
        let next = Secret::generate();
        let gateway_pins = self.gateway_pins();
        let settings = Settings {
            host: host.name.clone(),
            generation: current.generation + 1,
            gateway_pins: gateway_pins.iter().map(|p| *p.as_bytes()).collect(),
        };
        let mut failures = Vec::new();
        for addr in addresses_of(&host) {
            let rotated = exchange::rotate_at(
                &identity,
                addr,
                pin,
                &current,
                &settings,
                &next,
                EXCHANGE_BUDGET,
            )
            .await;
            match rotated {
                Ok(()) => {
                    let secret = HostSecret {
                        generation: settings.generation,
                        secret: next,
                    };
                    self.secrets.write(&host.name, &secret).map_err(|source| {
                        EnrollError::Secret {
                            host: host.name.clone(),
                            source,
                        }
                    })?;
                    self.inventory
                        .record_rotation(&host.name, settings.generation)?;
                    return Ok(RotateResponse {
                        host: host.name,
                        generation: settings.generation,
                        gateway_pins,
                    });
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(EnrollError::Unreachable {
            host: host.name,
            why: failures.join("; "),
        })
    }

    /// Finds waiting agents and enrolls (or refuses) them, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(identity) = self.identity.clone() else {
            return;
        };
        let mut revisions = self.inventory.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut attempts: JoinSet<()> = JoinSet::new();
        let mut next_try: HashMap<(String, SocketAddr), Instant> = HashMap::new();
        let in_flight = Arc::new(Mutex::new(std::collections::HashSet::new()));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = revisions.changed() => if changed.is_err() { break },
                Some(_) = attempts.join_next(), if !attempts.is_empty() => continue,
                () = shutdown.cancelled() => break,
            }
            let now = Instant::now();
            next_try.retain(|_, at| *at + Duration::from_secs(300) > now);
            for job in self.jobs() {
                let key = (job.id.clone(), job.addr);
                // One exchange per token at a time, whatever the addresses: two at once could
                // both reach the agent, and the secret kept here might not be the one it took.
                if next_try.get(&key).is_some_and(|at| *at > now)
                    || attempts.len() >= CONCURRENT
                    || !in_flight.lock().expect("in flight").insert(job.id.clone())
                {
                    continue;
                }
                let wait = if job.refusal.is_some() { 5 } else { 3 };
                next_try.insert(key, now + Duration::from_secs(wait));
                let (this, identity, in_flight) =
                    (self.clone(), identity.clone(), in_flight.clone());
                attempts.spawn(async move {
                    let id = job.id.clone();
                    this.attempt(&identity, job).await;
                    in_flight.lock().expect("in flight").remove(&id);
                });
            }
        }
        attempts.shutdown().await;
    }

    /// What to do now: agents to enroll, and agents to tell why not.
    fn jobs(&self) -> Vec<Job> {
        let now = self.inventory.now();
        let tokens = self.tokens();
        let mut jobs = Vec::new();
        for host in self.inventory.hosts() {
            let Some(id) = host.txt.get(TXT_ENROLL) else {
                continue;
            };
            if host.agent
                && host.trust == TrustState::Enrolled
                && !tokens
                    .get(id)
                    .is_some_and(|t| t.state(now) == EnrollmentState::Pending)
            {
                continue; // enrolled, announcing an old id until it restarts
            }
            let refusal = match tokens.get(id) {
                None => Some(format!("this broker issued no token {id}; on the broker's side run `virtgate enroll {}` and run the command it prints", host.name)),
                Some(t) if t.host != host.name => Some(format!("token {id} is for host {}, but this agent announces itself as {}: run the agent with --hostname {} (or create a token for {})", t.host, host.name, t.host, host.name)),
                Some(t) => t.refusal(now),
            };
            for addr in addresses_of(&host) {
                jobs.push(Job {
                    id: id.clone(),
                    host: host.name.clone(),
                    addr,
                    refusal: refusal.clone(),
                });
            }
        }
        for t in tokens.all() {
            let Some(addr) = t.address.as_deref().and_then(|a| a.parse().ok()) else {
                continue;
            };
            // An agent started with a finished token at a known address is told why, for a
            // day after the token ended (it answers only if it waits for that very token).
            let refusal = t.refusal(now);
            if refusal.is_some()
                && now > t.expires_at.max(t.created_at) + REFUSE_FOR.as_secs() as i64
            {
                continue;
            }
            jobs.push(Job {
                id: t.id.clone(),
                host: t.host.clone(),
                addr,
                refusal,
            });
        }
        jobs
    }

    async fn attempt(&self, identity: &Identity, job: Job) {
        let Job {
            id,
            host,
            addr,
            refusal,
        } = job;
        if let Some(why) = refusal {
            warn!(token = %id, %host, %addr, "an agent waits with a token this broker will not take: {why}");
            exchange::refuse_at(identity, addr, &id, &why, EXCHANGE_BUDGET).await;
            return;
        }
        // Spent (or ended) since the job was planned, e.g. at another address: nothing to do.
        let now = self.inventory.now();
        let Some(verifier) = self
            .tokens()
            .get(&id)
            .filter(|t| t.state(now) == EnrollmentState::Pending)
            .and_then(|t| t.verifier())
        else {
            return;
        };
        let secret = Secret::generate();
        let settings = Settings {
            host: host.clone(),
            generation: 1,
            gateway_pins: self.gateway_pins().iter().map(|p| *p.as_bytes()).collect(),
        };
        let enrolled = exchange::enroll_at(
            identity,
            addr,
            &id,
            &verifier,
            &settings,
            &secret,
            EXCHANGE_BUDGET,
        )
        .await;
        match enrolled {
            Ok(pin) => self.enrolled(&id, &host, addr, pin, secret),
            Err(e @ ExchangeError::ProofFailed(_)) => {
                warn!(token = %id, %host, %addr, "enrollment failed: {e}");
                let _ = self.tokens().failed(&id, e.to_string());
            }
            Err(e) => {
                warn!(token = %id, %host, %addr, "enrollment attempt failed: {e}");
                self.tokens().note(&id, e.to_string());
            }
        }
    }

    /// The agent took the secret: keep it for the gateways, pin the agent, spend the token.
    fn enrolled(&self, id: &str, host: &str, addr: SocketAddr, pin: Pin, secret: Secret) {
        let secret = HostSecret {
            generation: 1,
            secret,
        };
        if let Err(e) = self.secrets.write(host, &secret) {
            warn!(token = %id, %host, error = %e, "enrolled, but the secret could not be written; enroll the host again");
            self.tokens().note(id, format!("secret not written: {e}"));
            return;
        }
        let detail = format!("enrolled {host} at {addr}, key sha256:{pin}");
        if let Err(e) = self.tokens().spend(id, detail) {
            warn!(token = %id, error = %e, "could not mark the token used");
        }
        match self
            .inventory
            .record_enrollment(host, pin, addr.ip(), addr.port(), id)
        {
            Ok(_) => {
                info!(token = %id, %host, %addr, pin = %pin, "host enrolled through its agent")
            }
            Err(e) => {
                warn!(token = %id, %host, error = %e, "enrolled, but the inventory could not record it")
            }
        }
    }
}

/// One exchange to make with an agent.
struct Job {
    id: String,
    host: String,
    addr: SocketAddr,
    /// Tell the agent this instead of enrolling it.
    refusal: Option<String>,
}

/// Where a host's agent listens: its addresses, then those announced but not verified yet.
fn addresses_of(host: &Host) -> Vec<SocketAddr> {
    host.addresses
        .iter()
        .chain(&host.pending_addresses)
        .map(|ip| SocketAddr::new(*ip, host.port))
        .collect()
}

/// `ADDR` (port 16514) or `ADDR:PORT`, IPv6 in brackets with a port.
fn parse_address(text: &str) -> Result<SocketAddr, EnrollError> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, virtgate_discovery::DEFAULT_LIBVIRT_TLS_PORT))
        .map_err(|_| EnrollError::BadAddress(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_a_default_port() {
        assert_eq!(
            parse_address("10.0.0.5").unwrap(),
            "10.0.0.5:16514".parse().unwrap()
        );
        assert_eq!(
            parse_address("[fd00::5]:1234").unwrap(),
            "[fd00::5]:1234".parse().unwrap()
        );
        assert_eq!(
            parse_address("fd00::5").unwrap(),
            "[fd00::5]:16514".parse().unwrap()
        );
        assert!(parse_address("h1").is_err());
    }
}
