//! The durable inventory: SQLite in the data directory.
//!
//! WAL mode: a committed transaction survives the process being killed at any point (approvals
//! included); `synchronous=NORMAL` may lose only the last commits on power loss, not on a crash.

use std::path::Path;

use rusqlite::{params, Connection};

use virtgate_api::{CertInfo, CertificateHistoryEntry, Event, EventKind, Host};

use crate::inventory::NewEvent;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("inventory database {path}: {source}; check the data directory's permissions and free space")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("inventory database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("inventory database holds a record that cannot be read ({0}); was it written by a newer virtgate?")]
    Corrupt(#[from] serde_json::Error),
    #[error("inventory database holds {0:?} as a pin, which is not one; restore the database from a backup")]
    BadPin(String),
    #[error("inventory schema version {found} is newer than this virtgate knows ({known}); upgrade virtgate")]
    TooNew { found: i64, known: i64 },
}

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: hosts, certificates, which host presented which certificate when, and the event log.
    "CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        pin TEXT,
        last_seen INTEGER NOT NULL,
        doc TEXT NOT NULL
     );
     CREATE TABLE certificates (
        sha256 TEXT PRIMARY KEY,
        der BLOB NOT NULL,
        info TEXT NOT NULL,
        first_seen INTEGER NOT NULL
     );
     CREATE TABLE host_certificates (
        host TEXT NOT NULL,
        address TEXT NOT NULL,
        position INTEGER NOT NULL,
        sha256 TEXT NOT NULL REFERENCES certificates(sha256),
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        PRIMARY KEY (host, address, position, sha256)
     );
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        host TEXT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
     );
     CREATE INDEX events_host ON events(host, id);",
];

pub(crate) struct Store {
    conn: Connection,
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub(crate) fn load_hosts(&self) -> Result<Vec<Host>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT doc, pin FROM hosts ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })?;
        let mut hosts = Vec::new();
        for row in rows {
            let (doc, pin) = row?;
            let mut host: Host = serde_json::from_str(&doc)?;
            // The pin column is written by approvals alone; it is the authority.
            host.pin = match pin {
                Some(pin) => Some(pin.parse().map_err(|_| StoreError::BadPin(pin))?),
                None => None,
            };
            hosts.push(host);
        }
        Ok(hosts)
    }

    /// Saves a host, the certificates it presents now and any events, in one transaction.
    pub(crate) fn save(
        &mut self,
        host: &Host,
        ders: &[(String, Vec<u8>)],
        events: &[NewEvent],
    ) -> Result<Vec<Event>, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO hosts (name, pin, last_seen, doc) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET pin = excluded.pin, last_seen = excluded.last_seen, doc = excluded.doc",
            params![host.name, host.pin.map(|p| p.to_string()), host.last_seen, serde_json::to_string(host)?],
        )?;
        let infos: std::collections::HashMap<&str, &CertInfo> = host
            .endpoints
            .iter()
            .flat_map(|e| e.chain.iter())
            .map(|c| (c.sha256.as_str(), c))
            .collect();
        for (sha, der) in ders {
            if let Some(info) = infos.get(sha.as_str()) {
                tx.execute(
                    "INSERT OR IGNORE INTO certificates (sha256, der, info, first_seen) VALUES (?1, ?2, ?3, ?4)",
                    params![sha, der, serde_json::to_string(info)?, host.last_probe.unwrap_or(host.last_seen)],
                )?;
            }
        }
        for endpoint in &host.endpoints {
            for cert in &endpoint.chain {
                if !ders.iter().any(|(sha, _)| sha == &cert.sha256) {
                    continue;
                }
                tx.execute(
                    "INSERT INTO host_certificates (host, address, position, sha256, first_seen, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                     ON CONFLICT(host, address, position, sha256) DO UPDATE SET last_seen = excluded.last_seen",
                    params![host.name, endpoint.address.to_string(), cert.position as i64, cert.sha256, endpoint.probed_at],
                )?;
            }
        }
        let mut written = Vec::new();
        for e in events {
            tx.execute(
                "INSERT INTO events (at, host, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                params![e.at, host.name, e.kind.as_str(), e.detail],
            )?;
            written.push(Event {
                id: tx.last_insert_rowid(),
                at: e.at,
                host: host.name.clone(),
                kind: e.kind,
                detail: e.detail.clone(),
            });
        }
        tx.commit()?;
        Ok(written)
    }

    /// Deletes a host and its certificate history; the event log keeps a `kind` entry.
    pub(crate) fn forget(&mut self, name: &str, event: &NewEvent) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let existed = tx.execute("DELETE FROM hosts WHERE name = ?1", params![name])? > 0;
        tx.execute(
            "DELETE FROM host_certificates WHERE host = ?1",
            params![name],
        )?;
        tx.execute(
            "DELETE FROM certificates WHERE sha256 NOT IN (SELECT sha256 FROM host_certificates)",
            [],
        )?;
        if existed {
            tx.execute(
                "INSERT INTO events (at, host, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                params![event.at, name, event.kind.as_str(), event.detail],
            )?;
        }
        tx.commit()?;
        Ok(existed)
    }

    /// The newest `limit` events after `after_id`, oldest first. One query per case, so the
    /// per-host one walks the `events_host` index instead of the whole log.
    pub(crate) fn events(
        &self,
        host: Option<&str>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let row = |r: &rusqlite::Row<'_>| {
            Ok(Event {
                id: r.get(0)?,
                at: r.get(1)?,
                host: r.get(2)?,
                kind: EventKind::parse(&r.get::<_, String>(3)?),
                detail: r.get(4)?,
            })
        };
        let mut events: Vec<Event> = match host {
            Some(host) => self
                .conn
                .prepare_cached(
                    "SELECT id, at, host, kind, detail FROM events
                     WHERE host = ?1 AND id > ?2 ORDER BY id DESC LIMIT ?3",
                )?
                .query_map(params![host, after_id, limit as i64], row)?
                .collect::<Result<_, _>>()?,
            None => self
                .conn
                .prepare_cached(
                    "SELECT id, at, host, kind, detail FROM events
                     WHERE id > ?1 ORDER BY id DESC LIMIT ?2",
                )?
                .query_map(params![after_id, limit as i64], row)?
                .collect::<Result<_, _>>()?,
        };
        events.reverse();
        Ok(events)
    }

    /// Every certificate a host has presented, with when it was first and last seen.
    pub(crate) fn certificate_history(
        &self,
        host: &str,
    ) -> Result<Vec<CertificateHistoryEntry>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT hc.address, c.info, MIN(hc.first_seen), MAX(hc.last_seen)
             FROM host_certificates hc JOIN certificates c ON c.sha256 = hc.sha256
             WHERE hc.host = ?1 GROUP BY hc.address, hc.sha256 ORDER BY MIN(hc.first_seen)",
        )?;
        let rows = stmt.query_map(params![host], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (address, info, first_seen, last_seen) = row?;
            let certificate: CertInfo = serde_json::from_str(&info)?;
            out.push(CertificateHistoryEntry {
                address,
                first_seen,
                last_seen,
                certificate,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_per_host_events_query_walks_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("i.sqlite")).unwrap();
        let plan: Vec<String> = store
            .conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT id, at, host, kind, detail FROM events
                 WHERE host = ?1 AND id > ?2 ORDER BY id DESC LIMIT ?3",
            )
            .unwrap()
            .query_map(params!["h1", 0, 50], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX events_host")),
            "{plan:?}"
        );
    }

    use super::*;
    use virtgate_api::{HostSource, TrustState};

    #[test]
    fn migrations_run_once_and_hosts_round_trip_with_the_pin_column_as_authority() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.sqlite");
        let mut host = Host::new(
            "h1",
            HostSource::Static,
            16514,
            vec!["10.0.0.1".parse().unwrap()],
            100,
        );
        host.trust = TrustState::Pinned;
        host.pin = Some(virtgate_api::Pin::from_bytes([0xab; 32]));
        {
            let mut store = Store::open(&path).unwrap();
            let events = store
                .save(
                    &host,
                    &[],
                    &[NewEvent::new(100, EventKind::Approved, "pin ab…")],
                )
                .unwrap();
            assert_eq!(events.len(), 1);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(store.load_hosts().unwrap(), vec![host]);
        let events = store.events(Some("h1"), 0, 10).unwrap();
        assert_eq!(events[0].kind, EventKind::Approved);
    }

    #[test]
    fn forgetting_removes_the_host_and_logs_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("i.sqlite")).unwrap();
        let host = Host::new("h1", HostSource::Mdns, 16514, vec![], 1);
        store.save(&host, &[], &[]).unwrap();
        let forgotten = |at| NewEvent::new(at, EventKind::Forgotten, "by operator");
        assert!(store.forget("h1", &forgotten(2)).unwrap());
        assert!(store.load_hosts().unwrap().is_empty());
        assert!(!store.forget("h1", &forgotten(3)).unwrap());
        assert_eq!(
            store.events(None, 0, 10).unwrap().last().unwrap().kind,
            EventKind::Forgotten
        );
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(err.to_string().contains("upgrade virtgate"), "{err}");
    }
}
