//! Benchmark helper (not a test) for `bench/sasl.sh`: two real libvirtds on free loopback ports,
//! one with `auth_tls = "none"` and one with `auth_tls = "sasl"` (cyrus-sasl SCRAM-SHA-256, one
//! sasldb user), the second also trusting the first one's CA, so one gateway backend identity
//! (issued by the first CA) reaches both.
//!
//! `bench_sasl_lab OUT_DIR` writes into OUT_DIR:
//! - `ca.pem`, `client/` (the benchmark client's `pkipath`), `client-nocert/` (only `cacert.pem`),
//!   `relay-server-*.pem`, `relay-client-*.pem`: as `bench_proxy_lab` does, from the first CA;
//! - `lab.env`: `LIBVIRTD_PORT`, `SASL_PORT`, `SASL_USER`, `SASL_PASSWORD`, `LIBVIRTD_PID`,
//!   `SASL_PID`;
//!
//! prints `READY`, and keeps both daemons until its stdin reaches end of file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use virtgate_testlab::bench::{ready_until_stdin_closes, write_relay_kit};
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::pki::write_file;

const SASL_USER: &str = "nova";
const SASL_PASSWORD: &str = "bench-sasl-password";

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: bench_sasl_lab OUT_DIR")?,
    );
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;

    let plain = Libvirtd::start(LibvirtdOptions {
        client_dn: "C=GB,O=virtgate-test,CN=virtgate-bench-client".to_string(),
        ..LibvirtdOptions::default()
    })?;
    let ca = plain.ca();
    let sasl = Libvirtd::start(LibvirtdOptions {
        extra_client_cas: vec![ca.cert_pem().to_string()],
        ..LibvirtdOptions::with_sasl_user(SASL_USER, SASL_PASSWORD)
    })?;
    write_relay_kit(&plain, &out)?;
    std::fs::create_dir_all(out.join("client-nocert"))?;
    write_file(&out.join("client-nocert/cacert.pem"), ca.cert_pem(), 0o644)?;

    write_file(
        &out.join("lab.env"),
        &format!(
            "LIBVIRTD_PORT={}\nSASL_PORT={}\nSASL_USER={SASL_USER}\nSASL_PASSWORD={SASL_PASSWORD}\n\
             LIBVIRTD_PID={}\nSASL_PID={}\n",
            plain.port(),
            sasl.port(),
            plain.pid().context("libvirtd has no PID")?,
            sasl.pid().context("libvirtd has no PID")?,
        ),
        0o644,
    )?;
    ready_until_stdin_closes()?;
    drop(sasl);
    drop(plain);
    Ok(())
}
