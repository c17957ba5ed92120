//! CPU cost of one per-connection check, step by step, on this machine: the four OPAQUE steps
//! of a relay login (gateway = client, agent = server) run in one process, one thread, and the
//! median of each is printed. Every step but the last is on a connect's critical path.
//!
//!     cargo run --release -p virtgate-pake --example login_cost [LOGINS]

// A plain wall clock around synchronous steps: there is no runtime here and no paused time.
#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant};

use virtgate_pake::driver::credential_for;
use virtgate_pake::opaque::{registration_response, LoginClient, LoginServer, RegistrationClient};
use virtgate_pake::{Binding, Purpose, Record, Secret, ServerKeys};

fn main() {
    let logins: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let keys = ServerKeys::generate();
    let secret = Secret::generate();
    let credential = credential_for(1);
    let (registration, request) =
        RegistrationClient::start(secret.as_bytes()).expect("registration start");
    let response = registration_response(&keys, &request, &credential).expect("registration");
    let upload = registration
        .finish(secret.as_bytes(), &response)
        .expect("registration finish");
    let record = Record::from_upload(&upload).expect("record");
    let binding = Binding::from_bytes([7; 32]);

    let mut steps: [Vec<Duration>; 4] = Default::default();
    for _ in 0..logins {
        let timed = Instant::now();
        let (client, ke1) = LoginClient::start(secret.as_bytes()).expect("KE1");
        steps[0].push(timed.elapsed());
        let timed = Instant::now();
        let (server, ke2) = LoginServer::start(
            &keys,
            Some(&record),
            &credential,
            &ke1,
            Purpose::Relay,
            &binding,
        )
        .expect("KE2");
        steps[1].push(timed.elapsed());
        let timed = Instant::now();
        let ke3 = client
            .finish(secret.as_bytes(), &ke2, Purpose::Relay, &binding)
            .expect("KE3");
        steps[2].push(timed.elapsed());
        let timed = Instant::now();
        server
            .finish(&ke3, Purpose::Relay, &binding)
            .expect("verified");
        steps[3].push(timed.elapsed());
    }
    let names = [
        "gateway: KE1 (LoginClient::start)",
        "agent:   KE2 (LoginServer::start)",
        "gateway: KE3 (LoginClient::finish)",
        "agent:   verify KE3 (LoginServer::finish)",
    ];
    let mut total = Duration::ZERO;
    println!("{logins} relay logins, medians:");
    for (name, mut times) in names.into_iter().zip(steps) {
        times.sort_unstable();
        let median = times[times.len() / 2];
        total += median;
        println!("  {name:<42} {:>6.0} µs", median.as_secs_f64() * 1e6);
    }
    println!(
        "  {:<42} {:>6.0} µs of CPU, one after another, plus two round trips",
        "one check",
        total.as_secs_f64() * 1e6
    );
}
