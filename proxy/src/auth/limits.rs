//! Failed password logins, counted per user name and per source address: past
//! `proxy.login_failures_per_user` (or `_per_source`) failures within
//! `proxy.login_failure_window`, further logins of that name (from that address) are refused
//! until the window that began with the first failure has passed. Names that do not exist are
//! counted like real ones, so the limit tells nothing about which names exist.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Most names (and addresses) tracked at once; beyond it, expired entries are dropped, and if
/// none has expired the newcomer is not tracked (a flood of names from many addresses is the
/// per-source limit's to stop).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub per_user: u32,
    pub per_source: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

struct Counts<K> {
    limit: u32,
    entries: HashMap<K, Window>,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            entries: HashMap::new(),
        }
    }

    fn blocked(&self, key: &K, now: Instant, window: Duration) -> bool {
        self.entries
            .get(key)
            .is_some_and(|w| w.failures >= self.limit && now < w.started + window)
    }

    fn fail(&mut self, key: &K, now: Instant, window: Duration) {
        if !self.entries.contains_key(key) && self.entries.len() >= MAX_TRACKED {
            self.entries.retain(|_, w| now < w.started + window);
            if self.entries.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = self.entries.entry(key.clone()).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= entry.started + window {
            *entry = Window {
                started: now,
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }
}

/// The failure counts of one gateway.
pub struct FailedLogins {
    window: Duration,
    state: Mutex<(Counts<String>, Counts<IpAddr>)>,
}

/// Which limit refused a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    User,
    Source,
}

impl FailedLogins {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            window: limits.window,
            state: Mutex::new((Counts::new(limits.per_user), Counts::new(limits.per_source))),
        }
    }

    /// Whether a login of `user` from `source` may be tried now.
    pub fn check(&self, user: &str, source: IpAddr) -> Result<(), Limited> {
        let now = Instant::now();
        let state = self.state.lock().expect("login counts poisoned");
        if state.1.blocked(&source, now, self.window) {
            return Err(Limited::Source);
        }
        if state.0.blocked(&user.to_string(), now, self.window) {
            return Err(Limited::User);
        }
        Ok(())
    }

    /// Counts a failed login.
    pub fn failed(&self, user: &str, source: IpAddr) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("login counts poisoned");
        state.0.fail(&user.to_string(), now, self.window);
        state.1.fail(&source, now, self.window);
    }

    /// A successful login clears the user's count (not the address's).
    pub fn succeeded(&self, user: &str) {
        self.state
            .lock()
            .expect("login counts poisoned")
            .0
            .entries
            .remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LoginLimits = LoginLimits {
        per_user: 3,
        per_source: 5,
        window: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn a_name_is_refused_after_its_failures_until_the_window_has_passed() {
        let logins = FailedLogins::new(LIMITS);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for source in [a, b, a] {
            assert_eq!(logins.check("alice", a), Ok(()));
            logins.failed("alice", source);
        }
        assert_eq!(logins.check("alice", b), Err(Limited::User));
        assert_eq!(logins.check("bob", b), Ok(()));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(logins.check("alice", a), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_trying_many_names_is_refused_whatever_name_it_tries_next() {
        let logins = FailedLogins::new(LIMITS);
        let a: IpAddr = [10, 0, 0, 1].into();
        for name in ["u1", "u2", "u3", "u4", "u5"] {
            logins.failed(name, a);
        }
        assert_eq!(logins.check("u6", a), Err(Limited::Source));
        assert_eq!(logins.check("u6", [10, 0, 0, 9].into()), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_and_known_names_are_counted_alike_and_a_success_clears_the_name() {
        let logins = FailedLogins::new(LIMITS);
        let a: IpAddr = [10, 0, 0, 1].into();
        logins.failed("alice", a);
        logins.failed("alice", a);
        logins.succeeded("alice");
        logins.failed("alice", a);
        assert_eq!(logins.check("alice", [10, 0, 0, 3].into()), Ok(()));
    }
}
