//! Hosts enrolled through `virtgate agent`: the enrollment pins the agent's key (trust
//! `enrolled`, no approval), and rotations are logged.

use std::net::IpAddr;

use virtgate_api::{EventKind, FindingKind, Host, HostSource, Pin, TrustState};

use super::{Change, Inventory, InventoryError, NewEvent};

impl Inventory {
    /// Records that the agent at `address:port` proved enrollment token `token` and presented
    /// `pin` on that session: `name` is `enrolled` with that key from now on. Addresses it
    /// announced besides are kept pending until they present the key.
    pub fn record_enrollment(
        &self,
        name: &str,
        pin: Pin,
        address: IpAddr,
        port: u16,
        token: &str,
    ) -> Result<Host, InventoryError> {
        let mut w = self.writer();
        let now = w.now;
        let mut host = w
            .get(name)
            .unwrap_or_else(|| Host::new(name, HostSource::Static, port, vec![address], now));
        let mut pending: Vec<IpAddr> = host
            .addresses
            .iter()
            .chain(&host.pending_addresses)
            .copied()
            .filter(|a| *a != address)
            .collect();
        pending.dedup();
        host.addresses = vec![address];
        host.pending_addresses = pending;
        host.port = port;
        host.agent = true;
        host.pin = Some(pin);
        host.presented_pin = Some(pin);
        host.trust = TrustState::Enrolled;
        host.trust_detail = format!("enrolled through its agent with token {token}");
        host.last_seen = now;
        host.findings.retain(|f| f.kind != FindingKind::Changed);
        let detail =
            format!("enrolled through its agent with token {token} at {address}: key {pin} pinned");
        let events = vec![NewEvent::new(now, EventKind::Enrolled, detail)];
        w.commit(Change::Save {
            host: Box::new(host.clone()),
            ders: Vec::new(),
            events,
        })?;
        Ok(host)
    }

    /// Logs that the per-host secret of `name` is now `generation`.
    pub fn record_rotation(&self, name: &str, generation: u32) -> Result<(), InventoryError> {
        let mut w = self.writer();
        let host = w
            .get(name)
            .ok_or_else(|| InventoryError::UnknownHost(name.into()))?;
        let detail = format!("per-host secret replaced: generation {generation}");
        let events = vec![NewEvent::new(w.now, EventKind::SecretRotated, detail)];
        w.commit(Change::Save {
            host: Box::new(host),
            ders: Vec::new(),
            events,
        })
        .map(drop)
    }
}
