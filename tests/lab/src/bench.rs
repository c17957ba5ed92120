//! What the benchmark helpers (`examples/bench_*_lab.rs`) share: the certificates every relay
//! in `bench/` needs, and the helpers' protocol with their script (print `READY`, keep the
//! daemons until standard input reaches end of file).

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Result;

use crate::libvirtd::Libvirtd;
use crate::pki::{write_file, ClientCertSpec, ServerCertSpec};

/// Writes into `out`, all from `daemon`'s one CA (ECDSA P-256, critical KU digitalSignature +
/// keyEncipherment, EKU serverAuth / clientAuth, as libvirt requires of every peer certificate):
/// - `ca.pem`: the CA certificate (libvirtd's `ca_file`, every relay's client CA);
/// - `client/`: the benchmark client's libvirt `pkipath` (`cacert.pem`, `clientcert.pem`,
///   `clientkey.pem`);
/// - `relay-server-cert.pem` / `relay-server-key.pem`: a relay's front-door certificate
///   (CN=localhost, SAN DNS localhost, IP 127.0.0.1, IP ::1);
/// - `relay-client-cert.pem` / `relay-client-key.pem`: a relay's backend identity towards
///   libvirtd.
pub fn write_relay_kit(daemon: &Libvirtd, out: &Path) -> Result<()> {
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
    Ok(())
}

/// Prints `READY`, then blocks until the script closes standard input (or exits); the caller
/// then drops its daemons, which stops them by PID.
pub fn ready_until_stdin_closes() -> Result<()> {
    println!("READY");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}
