//! Failed checks per source address: past `agent.max_failed_checks_per_minute` in a minute,
//! the address is refused at accept until that minute is over. Bounded: at most
//! [`MAX_SOURCES`] addresses are remembered; when full, entries whose minute is over go first,
//! and a new address is then not counted (it is still checked like any other).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);
pub const MAX_SOURCES: usize = 4096;

pub struct Limiter {
    per_minute: u32,
    sources: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Limiter {
    pub fn new(per_minute: u32) -> Limiter {
        Limiter {
            per_minute: per_minute.max(1),
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `source` is refused now.
    pub fn refused(&self, source: IpAddr) -> bool {
        let now = Instant::now();
        let sources = self.sources.lock().expect("limiter poisoned");
        sources
            .get(&source)
            .is_some_and(|(since, n)| now.duration_since(*since) < WINDOW && *n >= self.per_minute)
    }

    /// Counts a failed check from `source`.
    pub fn failed(&self, source: IpAddr) {
        let now = Instant::now();
        let mut sources = self.sources.lock().expect("limiter poisoned");
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            sources.retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
            if sources.len() >= MAX_SOURCES {
                return;
            }
        }
        let entry = sources.entry(source).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_source_is_refused_after_its_failures_for_the_rest_of_the_minute() {
        let limiter = Limiter::new(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..2 {
            limiter.failed(a);
        }
        assert!(!limiter.refused(a), "below the limit");
        limiter.failed(a);
        assert!(limiter.refused(a));
        assert!(!limiter.refused(b), "another address is not affected");
        tokio::time::advance(WINDOW).await;
        assert!(!limiter.refused(a), "a new minute starts clean");
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_of_sources_stays_bounded() {
        let limiter = Limiter::new(1);
        for i in 0..(MAX_SOURCES as u32 + 100) {
            limiter.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(limiter.sources.lock().unwrap().len() <= MAX_SOURCES);
    }
}
