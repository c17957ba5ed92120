//! An attacker's broker: answers every request with the inventory it was given, over HTTPS with
//! whatever certificate it was given. It counts the TLS connections offered to it and the
//! requests it answered (a request needs a completed handshake).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtgate_pki::rustls::{self, ServerConfig};

pub struct FakeBroker {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

impl FakeBroker {
    /// Serves `inventory` (a watch answer, JSON) on a loopback port over HTTPS with `cert` and
    /// `key` (PEM files).
    pub fn https(cert: &Path, key: &Path, inventory: String) -> FakeBroker {
        let config = Arc::new(
            ServerConfig::builder_with_provider(virtgate_pki::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    virtgate_pki::read_certs(cert).unwrap(),
                    virtgate_pki::read_key(key).unwrap(),
                )
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (c, a) = (connections.clone(), answered.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(tcp) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (config, a, inventory) = (config.clone(), a.clone(), inventory.clone());
                std::thread::spawn(move || {
                    let Ok(tls) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut stream = rustls::StreamOwned::new(tls, tcp);
                    let mut request = Vec::new();
                    let mut byte = [0u8; 1];
                    while !request.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => request.push(byte[0]),
                            _ => return, // the handshake failed, or the client left
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{inventory}",
                        inventory.len()
                    );
                    if stream.write_all(answer.as_bytes()).is_ok() {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                });
            }
        });
        FakeBroker {
            addr,
            connections,
            answered,
        }
    }

    /// TCP connections offered to it.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests it answered with its inventory.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

/// A watch answer that puts host `h1` at `address:port`, pinned to `pin` (hex): what an
/// attacker who controls the broker's answers would send to send h1's sessions to itself.
pub fn inventory_pointing_h1_at(address: &str, port: u16, pin: &str) -> String {
    format!(
        r#"{{"revision": 7, "epoch": "00000000000000000000000000000bad", "hosts": [{{"name": "h1", "source": "static", "port": {port}, "addresses": ["{address}"], "state": "up", "trust": "pinned", "pin": "{pin}", "first_seen": 0, "last_seen": 0, "endpoints": [], "findings": []}}]}}"#
    )
}
