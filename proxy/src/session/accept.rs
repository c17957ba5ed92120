//! Step 1: the client's TLS handshake (a certificate from a configured CA is required), the DN
//! allow-list, then the `0x01` byte that tells a libvirt client the session is accepted.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::outcome::{ConnectionResult, Ended, Outcome};
use super::Gateway;
use crate::tls::{subject_dn, TlsMaterial};

pub(crate) type ClientTls = TlsStream<TcpStream>;

/// Completes the TLS handshake by `deadline` and checks who the client is; returns the stream
/// with the confirmation byte sent and the certificate's subject DN (none only where
/// `proxy.front_auth` lets a password stand in for it), and records the identity in `out`.
pub(crate) async fn identify(
    gateway: &Gateway,
    material: &TlsMaterial,
    tcp: TcpStream,
    deadline: tokio::time::Instant,
    out: &mut Outcome,
) -> Result<(ClientTls, Option<String>), Ended> {
    let m = &gateway.metrics;
    let limit = gateway.config.handshake_timeout;
    let _ = tcp.set_nodelay(true);
    let started = tokio::time::Instant::now();
    let handshake = TlsAcceptor::from(material.server.clone()).accept(tcp);
    let mut client = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = classify_tls_error(&e);
            m.auth_failures.with_label_values(&["tls", reason]).inc();
            let detail = format!("TLS handshake failed: {e}");
            return Err(Ended::new(ConnectionResult::TlsFailed, detail));
        }
        Err(_) => {
            m.auth_failures.with_label_values(&["tls", "timeout"]).inc();
            let detail = format!("no TLS handshake within {limit:?}");
            return Err(Ended::new(ConnectionResult::TlsFailed, detail));
        }
    };
    m.handshake_duration
        .observe(started.elapsed().as_secs_f64());
    let certificate = client
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first());
    let dn = certificate.and_then(subject_dn);
    let no_certificate_allowed = certificate.is_none() && gateway.front_auth.certificate_optional();
    let Some(dn) = dn else {
        if no_certificate_allowed {
            return confirm(client, deadline).await.map(|c| (c, None));
        }
        m.auth_failures
            .with_label_values(&["tls", "no_certificate"])
            .inc();
        let detail = "no usable client certificate";
        return Err(Ended::new(ConnectionResult::TlsFailed, detail));
    };
    out.identity = Some(dn.clone());
    if !gateway.allowed_dn.allows(&dn) {
        m.auth_failures
            .with_label_values(&["dn", "not_allowed"])
            .inc();
        let _ = client.shutdown().await;
        let detail = "subject DN not in proxy.allowed_dn";
        return Err(Ended::new(ConnectionResult::DnNotAllowed, detail));
    }
    confirm(client, deadline).await.map(|c| (c, Some(dn)))
}

/// Sends the `0x01` byte libvirt clients wait for.
async fn confirm(
    mut client: ClientTls,
    deadline: tokio::time::Instant,
) -> Result<ClientTls, Ended> {
    let confirm = async {
        client.write_all(&[1]).await?;
        client.flush().await
    };
    match tokio::time::timeout_at(deadline, confirm).await {
        Ok(Ok(())) => Ok(client),
        _ => Err(Ended::closed("client left after the handshake")),
    }
}

/// The `reason` label of a failed client handshake, from rustls's typed error.
pub(crate) fn classify_tls_error(e: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::InvalidCertificate(C::Revoked)) => "revoked",
        Some(rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => "expired",
        Some(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
        _ => "handshake_failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn handshake_failures_are_labelled_by_the_error_type_not_its_text() {
        use rustls::CertificateError as C;
        for (error, reason) in [
            (rustls::Error::NoCertificatesPresented, "no_certificate"),
            (
                rustls::Error::InvalidCertificate(C::UnknownIssuer),
                "bad_certificate",
            ),
            (
                rustls::Error::InvalidCertificate(C::BadSignature),
                "bad_certificate",
            ),
            (rustls::Error::InvalidCertificate(C::Revoked), "revoked"),
            (rustls::Error::InvalidCertificate(C::Expired), "expired"),
            (
                rustls::Error::General("no certificate here".into()),
                "handshake_failed",
            ),
        ] {
            assert_eq!(
                classify_tls_error(&wrapped(error.clone())),
                reason,
                "{error:?}"
            );
        }
        let plain = std::io::Error::other("peer sent no certificates");
        assert_eq!(classify_tls_error(&plain), "handshake_failed");
    }
}
