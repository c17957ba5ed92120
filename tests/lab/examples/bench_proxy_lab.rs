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

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::pki::{write_file, ClientCertSpec, ServerCertSpec};

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
    let ca = daemon.ca();
    write_file(&out.join("ca.pem"), ca.cert_pem(), 0o644)?;
    daemon
        .client_cert()
        .write_client_files(&out.join("client"), ca.cert_pem())?;

    let front = ca.issue_server(&ServerCertSpec::localhost())?;
    write_file(&out.join("relay-server-cert.pem"), &front.cert_pem, 0o644)?;
    write_file(&out.join("relay-server-key.pem"), &front.key_pem, 0o600)?;
    let back = ca.issue_client(&ClientCertSpec::new(
        "C=GB,O=virtgate-test,CN=virtgate-bench-relay",
    ))?;
    write_file(&out.join("relay-client-cert.pem"), &back.cert_pem, 0o644)?;
    write_file(&out.join("relay-client-key.pem"), &back.key_pem, 0o600)?;

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
    println!("READY");
    std::io::stdout().flush()?;

    // Block until the script closes our stdin (or exits); then `daemon` drops and stops libvirtd.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(daemon);
    Ok(())
}
