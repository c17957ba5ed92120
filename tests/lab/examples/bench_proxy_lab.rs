//! Benchmark helper (not a test): a real libvirtd (test driver, TLS on a free loopback port) and
//! the certificates the relays in `bench/proxy.sh` need, all from the daemon's one CA (ECDSA
//! P-256, critical KU digitalSignature + keyEncipherment, EKU serverAuth / clientAuth, as libvirt
//! requires of every peer certificate).
//!
//! `bench_proxy_lab OUT_DIR` writes into OUT_DIR:
//! - `ca.pem`: the CA certificate (libvirtd's `ca_file`, every relay's client CA);
//! - `client/`: the benchmark client's libvirt `pkipath` (`cacert.pem`, `clientcert.pem`,
//!   `clientkey.pem`);
//! - `relay-server-cert.pem` / `relay-server-key.pem`: a relay's front-door certificate
//!   (CN=localhost, SAN DNS localhost, IP 127.0.0.1, IP ::1);
//! - `relay-client-cert.pem` / `relay-client-key.pem`: a relay's backend identity towards libvirtd;
//! - `lab.env`: `LIBVIRTD_PORT=…`, `LIBVIRTD_PID=…` and `LIBVIRTD_SOCKET=…` (its read-write UNIX
//!   socket, for a host agent) in shell syntax,
//!
//! then prints `READY` and keeps the daemon running until its stdin reaches end of file (the
//! script closes the pipe, or dies), and then stops libvirtd by its PID and removes its scratch
//! directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use virtgate_testlab::bench::{ready_until_stdin_closes, write_relay_kit};
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::pki::write_file;

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: bench_proxy_lab OUT_DIR")?,
    );
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;

    let daemon = Libvirtd::start(LibvirtdOptions {
        client_dn: "C=GB,O=virtgate-test,CN=virtgate-bench-client".to_string(),
        ..LibvirtdOptions::default()
    })?;
    write_relay_kit(&daemon, &out)?;
    write_file(
        &out.join("lab.env"),
        &format!(
            "LIBVIRTD_PORT={}\nLIBVIRTD_PID={}\nLIBVIRTD_SOCKET={}\n",
            daemon.port(),
            daemon.pid().context("libvirtd has no PID")?,
            daemon.unix_socket().display()
        ),
        0o644,
    )?;
    ready_until_stdin_closes()?;
    drop(daemon);
    Ok(())
}
