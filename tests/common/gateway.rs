//! `virtgate up` as a gateway in front of a real libvirtd, with client identities to test with.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use virtgate_testlab::libvirtd::Libvirtd;
use virtgate_testlab::pki::{ClientCertSpec, ServerCertSpec};
use virtgate_testlab::LabProcess;

use super::{free_port, https, tls_client, VIRTGATE};

pub struct Gateway {
    pub process: LabProcess,
    pub port: u16,
    pub api: std::net::SocketAddr,
    pub data_dir: PathBuf,
    pub config: PathBuf,
}

/// The CA `virtgate up` issues its API's development certificate from (the file beside it).
pub fn up_api_ca(data_dir: &Path) -> PathBuf {
    data_dir.join("pki/broker/cacert.pem")
}

/// Where each client identity's libvirt pkipath directory is.
pub struct Identity {
    pub pki: PathBuf,
}

pub fn identity(libvirtd: &Libvirtd, name: &str, dn: &str) -> Identity {
    Identity {
        pki: libvirtd
            .issue_client_pki_dir(name, &ClientCertSpec::new(dn))
            .unwrap(),
    }
}

impl Gateway {
    /// Starts `virtgate up` with the host table and rules given as TOML. The gateway's server
    /// certificate and its backend identity come from `libvirtd`'s CA, so the host trusts the
    /// gateway and the clients (whose pkipath cacert.pem is that CA) trust the gateway.
    pub fn start(dir: &Path, libvirtd: &Libvirtd, hosts_and_rules: &str) -> Gateway {
        Self::start_with(dir, libvirtd, "probe_interval = \"1s\"", hosts_and_rules)
    }

    /// Like [`Gateway::start`], with `broker_toml` (keys of the `[broker]` section) instead of a
    /// one-second probe interval.
    pub fn start_with(
        dir: &Path,
        libvirtd: &Libvirtd,
        broker_toml: &str,
        hosts_and_rules: &str,
    ) -> Gateway {
        let port = free_port();
        let api: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let (config, data_dir) = write_up_config(
            dir,
            libvirtd,
            port,
            api,
            &format!("discovery = false\n{broker_toml}"),
            hosts_and_rules,
        );
        let gw = Gateway {
            process: spawn_up(&config),
            port,
            api,
            data_dir,
            config,
        };
        gw.wait_ready();
        gw
    }

    /// Stops `up` and starts it again on the same configuration file (read anew: an edited
    /// file takes effect) and data.
    pub fn restart(&mut self) {
        self.process.stop(Duration::from_secs(10));
        self.process = spawn_up(&self.config);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.get("/readyz").is_ok_and(|(s, _)| s == 200) {
            assert!(
                Instant::now() < deadline,
                "gateway not ready:\n{}",
                self.process.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on the API, over HTTPS verified with `up`'s development CA.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let ca = up_api_ca(&self.data_dir);
        if !ca.is_file() {
            return Err(std::io::Error::other("no API certificate yet"));
        }
        https(self.api, &tls_client(&ca, None), "GET", path, None, None)
    }

    /// Waits until the inventory shows `host` in `trust`.
    pub fn wait_trust(&self, host: &str, trust: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = self.get(&format!("/v1/hosts/{host}")).unwrap();
            if status == 200 && body.contains(&format!("\"trust\": \"{trust}\"")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{host} not {trust}: {body}\n{}",
                self.process.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Approves whatever key `host` presents now (the pin the CLI shows).
    pub fn approve(&self, host: &str) {
        let run = |args: &[&str]| {
            Command::new(VIRTGATE)
                .args(["--config", self.config.to_str().unwrap()])
                .args(args)
                .output()
                .unwrap()
        };
        let out = super::approve_shown_pin(run, host);
        assert!(
            out.status.success(),
            "approve {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `test+tls://ADDR:PORT/default?name=test://HOST/default&pkipath=…` through the gateway.
    pub fn uri(&self, addr: &str, host: &str, who: &Identity) -> String {
        format!(
            "test+tls://{addr}:{}/default?name=test://{host}/default&pkipath={}",
            self.port,
            who.pki.display()
        )
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").unwrap().1
    }
}

/// Writes the configuration of a `virtgate up` gateway in front of `libvirtd` (certificates from
/// its CA) to `dir/virtgate.toml`: the gateway on loopback `port`, the API on `api`,
/// `broker_extra` added to `[broker]`. Returns the file and the data directory.
pub fn write_up_config(
    dir: &Path,
    libvirtd: &Libvirtd,
    port: u16,
    api: std::net::SocketAddr,
    broker_extra: &str,
    hosts_and_rules: &str,
) -> (PathBuf, PathBuf) {
    let server = libvirtd
        .ca()
        .issue_server(&ServerCertSpec::localhost())
        .unwrap();
    let (server_cert, server_key) = (dir.join("gw-cert.pem"), dir.join("gw-key.pem"));
    std::fs::write(&server_cert, &server.cert_pem).unwrap();
    std::fs::write(&server_key, &server.key_pem).unwrap();
    let backend = libvirtd
        .issue_client_pki_dir(
            "gateway",
            &ClientCertSpec::new("O=virtgate-test,CN=gateway"),
        )
        .unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, libvirtd.ca().cert_pem()).unwrap();
    let data_dir = dir.join("data");
    let config = dir.join("virtgate.toml");
    let s = |p: &Path| format!("{:?}", p.display().to_string());
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {}\nlisten = \"{api}\"\n{broker_extra}\n\
             [proxy]\nlisten = [\"127.0.0.1:{port}\", \"[::1]:{port}\"]\nserver_cert_file = {}\nserver_key_file = {}\n\
             client_ca_files = [{}]\nbackend_cert_file = {}\nbackend_key_file = {}\n{hosts_and_rules}\n",
            s(&data_dir),
            s(&server_cert),
            s(&server_key),
            s(&ca),
            s(&backend.join("clientcert.pem")),
            s(&backend.join("clientkey.pem")),
        ),
    )
    .unwrap();
    (config, data_dir)
}

fn spawn_up(config: &Path) -> LabProcess {
    let mut cmd = Command::new(VIRTGATE);
    cmd.args(["--config", config.to_str().unwrap(), "up"])
        .env("RUST_LOG", "info");
    LabProcess::spawn(cmd).unwrap()
}

/// Runs `virtgate --config CONFIG broker` alone (the broker half of a gateway's configuration)
/// and waits until its API at `api` is ready.
pub fn broker_alone(config: &Path, api: std::net::SocketAddr) -> LabProcess {
    let mut cmd = Command::new(VIRTGATE);
    cmd.args(["--config", config.to_str().unwrap(), "broker"]);
    let broker = LabProcess::spawn(cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !super::http(api, "GET", "/readyz", None, None).is_ok_and(|(s, _)| s == 200) {
        assert!(Instant::now() < deadline, "{}", broker.stderr_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    broker
}

pub fn virsh(uri: &str, args: &[&str]) -> Output {
    Command::new("/usr/bin/virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .unwrap()
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a python3-libvirt script; the URI is in the environment variable `URI`.
pub fn python(uri: &str, script: &str) -> Output {
    Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .env("URI", uri)
        .output()
        .unwrap()
}

/// `virtgate proxy` alone, in front of hosts whose CA is `libvirtd`'s: its configuration file
/// and the ports it listens on.
pub struct ProxySetup {
    pub config: PathBuf,
    pub port: u16,
    pub metrics_port: u16,
}

impl ProxySetup {
    /// Writes `<dir>/<name>.toml`: the gateway's server certificate and client CA from
    /// `libvirtd`'s CA, the backend identity `backend` (certificate and key files; default: one
    /// from `libvirtd`'s CA), then `extra_toml` (rules, `[broker]` keys).
    pub fn write(
        dir: &Path,
        name: &str,
        libvirtd: &Libvirtd,
        backend: Option<(PathBuf, PathBuf)>,
        extra_toml: &str,
    ) -> ProxySetup {
        let server = libvirtd
            .ca()
            .issue_server(&ServerCertSpec::localhost())
            .unwrap();
        let (server_cert, server_key, ca) = (
            dir.join(format!("{name}-cert.pem")),
            dir.join(format!("{name}-key.pem")),
            dir.join(format!("{name}-client-ca.pem")),
        );
        std::fs::write(&server_cert, &server.cert_pem).unwrap();
        virtgate_testlab::pki::write_file(&server_key, &server.key_pem, 0o600).unwrap();
        std::fs::write(&ca, libvirtd.ca().cert_pem()).unwrap();
        let (backend_cert, backend_key) = backend.unwrap_or_else(|| {
            let pki = libvirtd
                .issue_client_pki_dir(
                    &format!("{name}-backend"),
                    &ClientCertSpec::new("O=virtgate-test,CN=gateway"),
                )
                .unwrap();
            (pki.join("clientcert.pem"), pki.join("clientkey.pem"))
        });
        let (port, metrics_port) = (free_port(), free_port());
        let config = dir.join(format!("{name}.toml"));
        let s = |p: &Path| format!("{:?}", p.display().to_string());
        std::fs::write(
            &config,
            format!(
                "[proxy]\nlisten = [\"127.0.0.1:{port}\"]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
                 server_cert_file = {}\nserver_key_file = {}\nclient_ca_files = [{}]\n\
                 backend_cert_file = {}\nbackend_key_file = {}\n{extra_toml}\n",
                s(&server_cert),
                s(&server_key),
                s(&ca),
                s(&backend_cert),
                s(&backend_key),
            ),
        )
        .unwrap();
        ProxySetup {
            config,
            port,
            metrics_port,
        }
    }

    /// Spawns `virtgate --config <config> proxy ARGS…` (not waiting for anything).
    pub fn spawn(&self, args: &[&str]) -> LabProcess {
        let mut cmd = Command::new(VIRTGATE);
        cmd.args(["--config", self.config.to_str().unwrap(), "proxy"])
            .args(args)
            .env("RUST_LOG", "info");
        LabProcess::spawn(cmd).unwrap()
    }

    /// Spawns it and waits until it listens.
    pub fn start(&self, args: &[&str]) -> LabProcess {
        let mut proxy = self.spawn(args);
        if proxy
            .wait_for_stderr("proxy started", Duration::from_secs(15))
            .is_err()
        {
            panic!("proxy did not start:\n{}", proxy.stderr_text());
        }
        proxy
    }

    /// `test+tls://127.0.0.1:PORT/default?name=test://HOST/default&pkipath=…` through it.
    pub fn uri(&self, host: &str, who: &Identity) -> String {
        format!(
            "test+tls://127.0.0.1:{}/default?name=test://{host}/default&pkipath={}",
            self.port,
            who.pki.display()
        )
    }
}

/// Runs virsh `args` at `uri` until `done` holds for its output, or `limit` passes; returns the
/// last output.
pub fn virsh_until(
    uri: &str,
    args: &[&str],
    limit: Duration,
    done: impl Fn(&Output) -> bool,
) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        let out = virsh(uri, args);
        if done(&out) || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// virsh output without the line that changes by itself (the test driver's CPU time is the clock).
pub fn stable(out: &[u8]) -> String {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| !l.starts_with("CPU time:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// python3-libvirt's view of a connection: versions, host name, domains.
pub const PY_SUMMARY: &str = r#"
import libvirt, os
libvirt.registerErrorHandler(lambda *a: None, None)
c = libvirt.open(os.environ["URI"])
print(c.getLibVersion(), c.getVersion(), c.getHostname(), sorted(d.name() for d in c.listAllDomains()))
c.close()
"#;

/// Does the same libvirt work directly against `libvirtd` and through `via`, and asserts both
/// give the same results: virsh list, dominfo, version and hostname; suspend and resume in one
/// session (test:///default resets when its last connection closes); a screenshot stream, byte
/// for byte, into `scratch`; python3-libvirt's summary. `context` adds to a failure (a log).
pub fn assert_same_results_as_direct(
    libvirtd: &Libvirtd,
    via: &str,
    scratch: &Path,
    context: &dyn Fn() -> String,
) {
    for args in [
        &["list", "--all"][..],
        &["dominfo", "test"],
        &["version"],
        &["hostname"],
    ] {
        let direct = libvirtd.virsh(args).unwrap();
        let through = virsh(via, args);
        assert!(
            through.status.success(),
            "virsh {args:?} through {via}: {}\n{}",
            text(&through),
            context()
        );
        assert_eq!(
            stable(&through.stdout),
            stable(&direct.stdout),
            "virsh {args:?}"
        );
    }

    let session = virsh(
        via,
        &["suspend test; domstate test; resume test; domstate test"],
    );
    assert!(session.status.success(), "{}", text(&session));
    let states: Vec<String> = String::from_utf8_lossy(&session.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| *l == "paused" || *l == "running")
        .map(str::to_string)
        .collect();
    assert_eq!(states, vec!["paused", "running"], "{}", text(&session));

    let (a, b) = (scratch.join("direct.img"), scratch.join("via.img"));
    let direct = libvirtd
        .virsh(&["screenshot", "test", a.to_str().unwrap()])
        .unwrap();
    let through = virsh(via, &["screenshot", "test", b.to_str().unwrap()]);
    assert!(
        direct.status.success() && through.status.success(),
        "{}\n{}",
        text(&direct),
        text(&through)
    );
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "screenshot stream relayed byte for byte"
    );

    let direct = python(&libvirtd.uri("127.0.0.1"), PY_SUMMARY);
    let through = python(via, PY_SUMMARY);
    assert!(
        through.status.success(),
        "{}\n{}",
        text(&through),
        context()
    );
    assert_eq!(
        String::from_utf8_lossy(&through.stdout),
        String::from_utf8_lossy(&direct.stdout)
    );
}

/// A python3-libvirt client holding an open connection, which makes one call (getHostname)
/// when told to: for tests that break the host while a call is in flight.
pub struct CallOnCue {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl CallOnCue {
    /// Opens the connection at `uri` and waits until it is open.
    pub fn open(uri: &str) -> CallOnCue {
        use std::io::BufRead;
        const SCRIPT: &str = r#"
import libvirt, os, sys, time
libvirt.registerErrorHandler(lambda *a: None, None)
c = libvirt.open(os.environ["URI"])
print("open", c.getLibVersion(), flush=True)
sys.stdin.readline()
t = time.monotonic()
try:
    c.getHostname()
    print("answered")
except libvirt.libvirtError as e:
    print("error after %.1fs: %s" % (time.monotonic() - t, e.get_error_message()))
"#;
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(SCRIPT)
            .env("URI", uri)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("open"), "{line}");
        CallOnCue { child, stdout }
    }

    /// Sends the call.
    pub fn call(&mut self) {
        use std::io::Write;
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
    }

    /// What the client printed about the call ("answered", or the error and how long it took),
    /// once it has exited; asserts it exited normally.
    pub fn outcome(mut self) -> String {
        use std::io::Read;
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success());
        rest
    }
}
