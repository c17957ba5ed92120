//! The durable inventory: SQLite in the data directory.
//!
//! WAL mode: a committed transaction survives the process being killed at any point (approvals
//! included); `synchronous=NORMAL` may lose only the last commits on power loss, not on a crash.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::cert::CertInfo;
use crate::model::{Event, Host};

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

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
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

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub fn load_hosts(&self) -> Result<Vec<Host>, StoreError> {
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
            host.pin = pin;
            hosts.push(host);
        }
        Ok(hosts)
    }

    /// Saves a host, the certificates it presents now and any events, in one transaction.
    pub fn save(
        &mut self,
        host: &Host,
        ders: &[(String, Vec<u8>)],
        events: &[(i64, String, String)],
    ) -> Result<Vec<Event>, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO hosts (name, pin, last_seen, doc) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET pin = excluded.pin, last_seen = excluded.last_seen, doc = excluded.doc",
            params![host.name, host.pin, host.last_seen, serde_json::to_string(host)?],
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
        for (at, kind, detail) in events {
            tx.execute(
                "INSERT INTO events (at, host, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                params![at, host.name, kind, detail],
            )?;
            written.push(Event {
                id: tx.last_insert_rowid(),
                at: *at,
                host: host.name.clone(),
                kind: kind.clone(),
                detail: detail.clone(),
            });
        }
        tx.commit()?;
        Ok(written)
    }

    /// Deletes a host and its certificate history; the event log keeps a `kind` entry.
    pub fn forget(
        &mut self,
        name: &str,
        at: i64,
        kind: &str,
        detail: &str,
    ) -> Result<bool, StoreError> {
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
                params![at, name, kind, detail],
            )?;
        }
        tx.commit()?;
        Ok(existed)
    }

    pub fn events(
        &self,
        host: Option<&str>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, at, host, kind, detail FROM events
             WHERE (?1 IS NULL OR host = ?1) AND id > ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![host, after_id, limit as i64], |r| {
            Ok(Event {
                id: r.get(0)?,
                at: r.get(1)?,
                host: r.get(2)?,
                kind: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        let mut events: Vec<Event> = rows.collect::<Result<_, _>>()?;
        events.reverse();
        Ok(events)
    }

    /// Every certificate a host has presented, with when it was first and last seen.
    pub fn certificate_history(
        &self,
        host: &str,
    ) -> Result<Vec<(String, CertInfo, i64, i64)>, StoreError> {
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
            let (address, info, first, last) = row?;
            out.push((address, serde_json::from_str(&info)?, first, last));
        }
        Ok(out)
    }

    pub fn has_certificate(&self, sha256: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM certificates WHERE sha256 = ?1",
                params![sha256],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostSource, TrustState};

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
        host.pin = Some("ab".repeat(32));
        {
            let mut store = Store::open(&path).unwrap();
            let events = store
                .save(&host, &[], &[(100, "approved".into(), "pin ab…".into())])
                .unwrap();
            assert_eq!(events.len(), 1);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(store.load_hosts().unwrap(), vec![host]);
        let events = store.events(Some("h1"), 0, 10).unwrap();
        assert_eq!(events[0].kind, "approved");
    }

    #[test]
    fn forgetting_removes_the_host_and_logs_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("i.sqlite")).unwrap();
        let host = Host::new("h1", HostSource::Mdns, 16514, vec![], 1);
        store.save(&host, &[], &[]).unwrap();
        assert!(store.forget("h1", 2, "forgotten", "by operator").unwrap());
        assert!(store.load_hosts().unwrap().is_empty());
        assert!(!store.forget("h1", 3, "forgotten", "again").unwrap());
        assert_eq!(
            store.events(None, 0, 10).unwrap().last().unwrap().kind,
            "forgotten"
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
