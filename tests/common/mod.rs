//! Helpers shared by the end-to-end tests of the root package.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one
#![allow(dead_code)]

pub mod agent;
pub mod fake_broker;
pub mod gateway;
pub mod raw;
pub mod tap;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use virtgate_pki::rustls::{self, ClientConfig};
use virtgate_testlab::LabProcess;

pub const VIRTGATE: &str = env!("CARGO_BIN_EXE_virtgate");

/// A real libvirtd set up as `up`'s *host setup* line and docs/pki.md *Deploying* say: the
/// gateway's backend CA (`backend_ca`, the file the banner names) appended to its `ca_file`, and
/// only the gateway's DN allowed.
pub fn libvirtd_set_up_for(backend_ca: &Path) -> virtgate_testlab::libvirtd::Libvirtd {
    virtgate_testlab::libvirtd::Libvirtd::start(virtgate_testlab::libvirtd::LibvirtdOptions {
        extra_client_cas: vec![std::fs::read_to_string(backend_ca).unwrap()],
        tls_allowed_dn_list: Some(vec![virtgate_pki::BACKEND_DN.to_string()]),
        ..Default::default()
    })
    .unwrap()
}

/// A `[[broker.hosts]]` entry for a host listening on 127.0.0.1:`port`.
pub fn static_host(name: &str, port: u16) -> String {
    format!("[[broker.hosts]]\nname = \"{name}\"\naddresses = [\"127.0.0.1\"]\nport = {port}\n")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `virtgate broker` on loopback with its own data directory and config file.
pub struct Broker {
    pub process: LabProcess,
    /// Where requests go (loopback, also for a broker listening on a wildcard address).
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// How requests verify the broker, when it serves HTTPS.
    pub tls: Option<Arc<ClientConfig>>,
}

/// The certificate of a broker that serves HTTPS, and the CA that issued it.
pub struct BrokerCert {
    pub ca: virtgate_testlab::pki::Ca,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// SPKI SHA-256 of the broker's key, hex.
    pub pin: String,
}

impl BrokerCert {
    /// A CA and a certificate for localhost, 127.0.0.1 and ::1, written into `dir`.
    pub fn new(dir: &Path) -> BrokerCert {
        let ca = virtgate_testlab::pki::Ca::new("virtgate-test broker CA").unwrap();
        let issued = ca
            .issue_server(&virtgate_testlab::pki::ServerCertSpec::localhost())
            .unwrap();
        let (ca_file, cert_file, key_file) = (
            dir.join("broker-ca.pem"),
            dir.join("broker-cert.pem"),
            dir.join("broker-key.pem"),
        );
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        std::fs::write(&cert_file, &issued.cert_pem).unwrap();
        virtgate_testlab::pki::write_file(&key_file, &issued.key_pem, 0o600).unwrap();
        BrokerCert {
            ca,
            ca_file,
            cert_file,
            key_file,
            pin: issued.spki_sha256_hex(),
        }
    }
}

impl Broker {
    /// Like [`Broker::start`], but listening on every address (0.0.0.0: beyond loopback, so
    /// reads need a certificate or a token) over HTTPS with `cert`. Requests from the tests go
    /// to 127.0.0.1 and verify the broker with `cert`'s CA.
    pub fn start_beyond_loopback(dir: &Path, cert: &BrokerCert, extra_toml: &str) -> Broker {
        let port = free_port();
        let data_dir = dir.join("data");
        let config = dir.join("virtgate.toml");
        std::fs::write(
            &config,
            format!(
                "[broker]
data_dir = {:?}
listen = \"0.0.0.0:{port}\"
discovery = false
\
                 tls_cert_file = {:?}
tls_key_file = {:?}
{extra_toml}
",
                data_dir.display().to_string(),
                cert.cert_file.display().to_string(),
                cert.key_file.display().to_string(),
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        Self::spawn(
            addr,
            config,
            data_dir,
            Some(tls_client(&cert.ca_file, None)),
        )
    }

    /// Writes `config_toml` (the `[broker]` section's `data_dir`, `listen` and `discovery =
    /// false` are added) and starts the broker in the root namespace: no mDNS daemon is created.
    pub fn start(dir: &Path, extra_toml: &str) -> Broker {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let data_dir = dir.join("data");
        let config = dir.join("virtgate.toml");
        std::fs::write(
            &config,
            format!(
                "[broker]\ndata_dir = {:?}\nlisten = \"{addr}\"\ndiscovery = false\n{extra_toml}\n",
                data_dir.display().to_string()
            ),
        )
        .unwrap();
        Self::spawn(addr, config, data_dir, None)
    }

    fn spawn(
        addr: SocketAddr,
        config: PathBuf,
        data_dir: PathBuf,
        tls: Option<Arc<ClientConfig>>,
    ) -> Broker {
        let mut cmd = Command::new(VIRTGATE);
        cmd.args(["--config", config.to_str().unwrap(), "broker"])
            .env("RUST_LOG", "info");
        let process = LabProcess::spawn(cmd).expect("start virtgate broker");
        let broker = Broker {
            process,
            addr,
            config,
            data_dir,
            tls,
        };
        broker.wait_ready();
        broker
    }

    /// One request, over HTTPS when the broker serves it.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        match &self.tls {
            Some(tls) => https(self.addr, tls, method, path, token, body),
            None => http(self.addr, method, path, token, body),
        }
    }

    /// Starts the same broker again (same config and data) after it was stopped.
    pub fn restart(self) -> Broker {
        let Broker {
            mut process,
            addr,
            config,
            data_dir,
            tls,
        } = self;
        process.stop(Duration::from_secs(5));
        Self::spawn(addr, config, data_dir, tls)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self
                .request("GET", "/readyz", None, None)
                .is_ok_and(|(s, _)| s == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("broker not ready; stderr:\n{}", self.process.stderr_text());
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// `GET path`; to a broker beyond loopback (whose reads need a credential) with the admin
    /// token.
    pub fn get(&self, path: &str) -> (u16, String) {
        let token = self.tls.as_ref().map(|_| self.token());
        self.request("GET", path, token.as_deref(), None)
            .expect("broker answers")
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON body")
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        self.request("POST", path, token, Some(body))
            .expect("broker answers")
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    /// Polls `GET /v1/hosts/{name}` until `pred` holds; returns the host document.
    pub fn wait_host(&self, name: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            let (status, body) = self.get(&format!("/v1/hosts/{name}"));
            if status == 200 {
                last = serde_json::from_str::<Value>(&body).unwrap()["host"].clone();
                if pred(&last) {
                    return last;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "host {name}: condition not met within {timeout:?}; last: {last:#}\nbroker stderr:\n{}",
            self.process.stderr_text()
        );
    }

    /// Runs a client subcommand (`hosts`, `certs`) against this broker.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(VIRTGATE)
            .args(["--config", self.config.to_str().unwrap()])
            .args(args)
            .args(["--broker", &self.url()])
            .output()
            .expect("run virtgate")
    }
}

/// A minimal HTTP/1.1 request (`Connection: close`) so the tests need no HTTP client library.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    http_within(addr, Duration::from_secs(70), method, path, token, body)
}

/// [`http`] that gives up (an error) when the answer takes longer than `limit`.
pub fn http_within(
    addr: SocketAddr,
    limit: Duration,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(limit))?;
    exchange(stream, addr, method, path, token, body)
}

/// A TLS client configuration that verifies servers with the CA in `ca_file` (PEM) and, with
/// `identity` (certificate and key PEM files), presents a client certificate.
pub fn tls_client(ca_file: &Path, identity: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in virtgate_pki::read_certs(ca_file).expect("CA file") {
        roots.add(ca).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(virtgate_pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                virtgate_pki::read_certs(cert).unwrap(),
                virtgate_pki::read_key(key).unwrap(),
            )
            .unwrap(),
    })
}

/// [`http`] over TLS: the server must present a certificate for `addr`'s IP address that
/// `tls` verifies.
pub fn https(
    addr: SocketAddr,
    tls: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(70)))?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let connection =
        rustls::ClientConnection::new(tls.clone(), name).map_err(std::io::Error::other)?;
    exchange(
        rustls::StreamOwned::new(connection, tcp),
        addr,
        method,
        path,
        token,
        body,
    )
}

fn exchange(
    mut stream: impl Read + Write,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        // A TLS peer that closes without close_notify after a complete answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        other => {
            other?;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // hyper sends full bodies with Content-Length, never chunked, so the rest is the body.
    Ok((status, body))
}

/// The value of the first sample of `metric` whose labels include every `key="value"` given.
pub fn sample(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (name_labels, value) = line.rsplit_once(' ')?;
            let (name, rest) = name_labels.split_once('{').unwrap_or((name_labels, ""));
            if name != metric {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse().ok())?
        })
}

/// Approves the key `host` presents now, as an operator without a terminal does: the CLI refuses
/// to approve blind and names the pin it saw; approving with `--pin` that pin succeeds. `run`
/// runs `virtgate` with the arguments given (and whatever configuration the caller needs).
pub fn approve_shown_pin(
    run: impl Fn(&[&str]) -> std::process::Output,
    host: &str,
) -> std::process::Output {
    let shown = run(&["hosts", "approve", host]);
    let stderr = String::from_utf8_lossy(&shown.stderr);
    assert!(
        !shown.status.success(),
        "approving without --pin or a terminal is refused: {stderr}"
    );
    let pin = stderr
        .split("--pin ")
        .nth(1)
        .and_then(|rest| rest.get(..64))
        .unwrap_or_else(|| panic!("the refusal names the pin to approve: {stderr}"))
        .to_string();
    run(&["hosts", "approve", host, "--pin", &pin])
}
