//! How virtgate's servers listen.
//!
//! Owns: binding TCP listeners the same way everywhere ([`bind`]: address reuse, IPv6-only IPv6
//! sockets so `0.0.0.0:P` and `[::]:P` coexist, a chosen backlog), and, with the `http` feature,
//! the plaintext `/metrics`, `/healthz` and `/readyz` endpoint ([`metrics::serve`]) that the
//! gateway and the host agent expose, bounded in connections and header time.
//! Must not: know about libvirt, TLS, or any component's state (readiness comes in as a
//! function), nor accept anything but those read-only paths on the metrics endpoint.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use tokio::net::TcpListener;

#[cfg(feature = "http")]
pub mod metrics;

/// Binds a listening TCP socket on `addr` with room for `backlog` connections not yet accepted.
/// Must be called inside a Tokio runtime.
pub fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_same_port_takes_an_ipv4_and_an_ipv6_listener() {
        let v4 = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let port = v4.local_addr().unwrap().port();
        // Only where the machine has IPv6 loopback; the IPv4 listener must not block it.
        if let Ok(v6) = bind(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port)), 16) {
            assert_eq!(v6.local_addr().unwrap().port(), port);
        }
        assert!(
            bind(SocketAddr::from(([127, 0, 0, 1], port)), 16).is_err(),
            "a second IPv4 listener on a port in use must fail"
        );
    }
}
