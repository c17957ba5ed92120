//! A real libvirtd (built-in `test` driver) serving TLS on loopback, per
//! `shared/notes/real-libvirtd.md` §2–§6.
//!
//! Each daemon gets a scratch dir with a private config, PKI, UNIX sockets (0700), log, pid
//! file and (optionally) sasldb, and a TLS port picked at run time, so several daemons run at
//! once and none touches the system's libvirt. It runs in the foreground as our child; we stop
//! it by that PID. `LIBVIRT_DRIVER_DIR` points at an empty dir, so no hypervisor driver loads.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv6Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::pki::{write_file, Ca, ClientCertSpec, IssuedCert, ServerCertSpec};
use crate::process::{describe, require_root_and_tools, run, tail, tool, LabProcess};

/// Tools this module needs.
pub const LIBVIRTD_TOOLS: &[&str] = &[
    "libvirtd",
    "/usr/bin/virsh",
    "/usr/bin/python3",
    "ss",
    "unshare",
    "mount",
    "sh",
    "timeout",
    "saslpasswd2",
];

/// Name that the private `/etc/hosts` resolves to both 127.0.0.1 and ::1; libvirtd takes one
/// `listen_addr`, and this is how it ends up listening on both families.
const DUAL_STACK_NAME: &str = "virtgate-lab-lo";
const LOG_FILE: &str = "libvirtd.log";
const STDERR_FILE: &str = "libvirtd.stderr";
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Bound on every virsh / python run, so a wedged daemon fails a test instead of hanging it.
const CLIENT_TIMEOUT_SECS: &str = "30";

/// Environment variables [`Libvirtd::python`] sets for the script.
pub mod env {
    /// `test+tls://127.0.0.1:PORT/default?pkipath=…`.
    pub const URI: &str = "VIRTGATE_LAB_URI";
    /// The same via `[::1]` (equal to `URI` when the daemon has no IPv6 listener).
    pub const URI_V6: &str = "VIRTGATE_LAB_URI_V6";
    /// The same via `localhost`.
    pub const URI_LOCALHOST: &str = "VIRTGATE_LAB_URI_LOCALHOST";
    /// The TLS port.
    pub const PORT: &str = "VIRTGATE_LAB_PORT";
    /// The client pkipath directory (`cacert.pem`, `clientcert.pem`, `clientkey.pem`).
    pub const PKI_DIR: &str = "VIRTGATE_LAB_PKI_DIR";
    /// First SASL user name (only with SASL).
    pub const SASL_USER: &str = "VIRTGATE_LAB_SASL_USER";
    /// First SASL user's password (only with SASL).
    pub const SASL_PASSWORD: &str = "VIRTGATE_LAB_SASL_PASSWORD";
    /// Auth file with the first SASL user's credentials (only with SASL). Not exported as
    /// `LIBVIRT_AUTH_FILE`: with that set, libvirt takes credentials from the file and never
    /// calls an `openAuth` callback, which would hide what a script passes.
    pub const AUTH_FILE: &str = "VIRTGATE_LAB_AUTH_FILE";
}

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct LibvirtdOptions {
    /// The daemon's certificate (default: CN=localhost, DNS localhost, IPs 127.0.0.1 and ::1,
    /// 10 years). libvirtd refuses to start with an expired or not-yet-valid certificate or one
    /// whose Key Usage it rejects.
    pub server_cert: ServerCertSpec,
    /// `(user, password)`; non-empty means `auth_tls = "sasl"` with SCRAM-SHA-256 only.
    pub sasl_users: Vec<(String, String)>,
    /// Subject of the client certificate in [`Libvirtd::client_pki_dir`].
    pub client_dn: String,
    /// libvirtd's `tls_allowed_dn_list`; `None` accepts any certificate from the CA.
    pub tls_allowed_dn_list: Option<Vec<String>>,
    /// More CA certificates (PEM) appended to the daemon's `ca_file`, so clients issued by them
    /// (e.g. a gateway's own development CA) are accepted too.
    pub extra_client_cas: Vec<String>,
}

impl Default for LibvirtdOptions {
    fn default() -> Self {
        LibvirtdOptions {
            server_cert: ServerCertSpec::localhost(),
            sasl_users: Vec::new(),
            client_dn: "C=GB,O=virtgate-test,CN=virtgate-lab-client".to_string(),
            tls_allowed_dn_list: None,
            extra_client_cas: Vec::new(),
        }
    }
}

impl LibvirtdOptions {
    /// Default options plus SASL with one user.
    pub fn with_sasl_user(user: &str, password: &str) -> Self {
        LibvirtdOptions {
            sasl_users: vec![(user.to_string(), password.to_string())],
            ..Self::default()
        }
    }
}

/// A running libvirtd; dropping it stops the daemon (SIGTERM, ≤ 10 s, SIGKILL) and removes
/// its scratch dir.
pub struct Libvirtd {
    // Field order is drop order: the daemon goes before its files.
    process: Option<LabProcess>,
    opts: LibvirtdOptions,
    port: u16,
    ipv6: bool,
    ca: Ca,
    server: IssuedCert,
    client: IssuedCert,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Libvirtd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirtd")
            .field("port", &self.port)
            .field("ipv6", &self.ipv6)
            .field("dir", &self.dir.path())
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

/// A port free right now on 127.0.0.1 and, when `ipv6`, also on `[::1]`.
fn free_port(ipv6: bool) -> Result<u16> {
    for _ in 0..100 {
        let v4 = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let port = v4.local_addr()?.port();
        if !ipv6 || TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no TCP port free on both 127.0.0.1 and [::1]")
}

/// Whether this machine lets us use the private-`/etc/hosts` trick for a dual-stack listener.
fn dual_stack_possible() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
        && Command::new(tool("unshare"))
            .args(["-m", "--propagation", "private", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
}

fn quote_conf(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Libvirtd {
    /// Creates the scratch dir and PKI, starts the daemon and waits (≤ 10 s) until it listens
    /// on 127.0.0.1 and, when possible, `[::1]`. On failure the error carries the log tail.
    pub fn start(opts: LibvirtdOptions) -> Result<Libvirtd> {
        require_root_and_tools(LIBVIRTD_TOOLS);
        let dir = tempfile::Builder::new()
            .prefix("virtgate-lab-libvirtd-")
            .tempdir()?;
        let d = dir.path();
        for sub in ["pki", "client", "run", "drivers-empty", "sasl2"] {
            fs::create_dir(d.join(sub))?;
        }
        for sub in ["", "pki", "client", "run", "sasl2"] {
            fs::set_permissions(
                d.join(sub),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )?;
        }

        let ca = Ca::new("virtgate-lab libvirtd CA")?;
        let server = ca.issue_server(&opts.server_cert)?;
        server.write_server_files(&d.join("pki"), &ca_file_pem(&ca, &opts.extra_client_cas))?;
        let client = ca.issue_client(&ClientCertSpec::new(&opts.client_dn))?;
        client.write_client_files(&d.join("client"), ca.cert_pem())?;

        if !opts.sasl_users.is_empty() {
            setup_sasl(d, &opts.sasl_users)?;
        }
        let ipv6 = dual_stack_possible();
        if ipv6 {
            let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
            write_file(
                &d.join("hosts"),
                &format!("{hosts}\n127.0.0.1 {DUAL_STACK_NAME}\n::1 {DUAL_STACK_NAME}\n"),
                0o644,
            )?;
        }

        let mut daemon = Libvirtd {
            process: None,
            opts,
            port: 0,
            ipv6,
            ca,
            server,
            client,
            dir,
        };
        // Another test may grab the port between our probe and libvirtd's bind; a new port
        // fixes that.
        let mut last_err = None;
        for _ in 0..3 {
            daemon.port = free_port(ipv6)?;
            let seen = daemon.log_sizes();
            match daemon.spawn_and_wait() {
                Ok(()) => return Ok(daemon),
                Err(e) if is_bind_error(&daemon.log_since(seen)) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("loop ran"))
    }

    fn write_config(&self) -> Result<()> {
        let d = self.dir.path();
        let p = |rel: &str| quote_conf(&d.join(rel).display().to_string());
        let listen_addr = if self.ipv6 {
            DUAL_STACK_NAME
        } else {
            "127.0.0.1"
        };
        let auth = if self.opts.sasl_users.is_empty() {
            "none"
        } else {
            "sasl"
        };
        let mut conf = format!(
            "listen_tls = 1\nlisten_tcp = 0\ntls_port = \"{port}\"\nlisten_addr = \"{listen_addr}\"\n\
             auth_tls = \"{auth}\"\nauth_tcp = \"none\"\n\
             key_file = {key}\ncert_file = {cert}\nca_file = {ca}\n\
             unix_sock_dir = {run}\nunix_sock_rw_perms = \"0700\"\nunix_sock_ro_perms = \"0700\"\n\
             unix_sock_admin_perms = \"0700\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
             host_uuid = \"8b1b3c2e-5a57-4a0e-9b8e-3f1c2d4e5f60\"\n\
             log_level = 3\nlog_outputs = \"3:file:{log}\"\n\
             keepalive_interval = 5\nkeepalive_count = 5\n\
             max_clients = 5000\nmax_anonymous_clients = 200\nmax_workers = 20\n",
            port = self.port,
            key = p("pki/serverkey.pem"),
            cert = p("pki/servercert.pem"),
            ca = p("pki/cacert.pem"),
            run = p("run"),
            log = d.join(LOG_FILE).display(),
        );
        if let Some(list) = &self.opts.tls_allowed_dn_list {
            let items: Vec<String> = list.iter().map(|s| quote_conf(s)).collect();
            let _ = writeln!(conf, "tls_allowed_dn_list = [{}]", items.join(", "));
        }
        write_file(&d.join("libvirtd.conf"), &conf, 0o600)
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let d = self.dir.path();
        self.write_config()?;
        // In its own mount namespace, libvirtd sees our /etc/hosts (the dual-stack name) and a
        // tmpfs on /run, which keeps the /run/libvirt/common/system.token it writes even with no
        // drivers private to this daemon.
        let mut cmd = if self.ipv6 {
            let mut c = Command::new(tool("unshare"));
            c.args(["-m", "--propagation", "private", "--"])
                .arg(tool("sh"))
                .arg("-c")
                .arg("mount --bind \"$0\" /etc/hosts && mount -t tmpfs tmpfs /run && exec \"$@\"")
                .arg(d.join("hosts"))
                .arg(tool("libvirtd"));
            c
        } else {
            Command::new(tool("libvirtd"))
        };
        // Foreground (no --daemon) so the PID we hold is libvirtd's; a private pid file keeps
        // it off /run/libvirtd.pid, which parallel daemons would fight over.
        cmd.arg("--listen")
            .arg("--config")
            .arg(d.join("libvirtd.conf"))
            .arg("--pid-file")
            .arg(d.join("libvirtd.pid"))
            .env("LIBVIRT_DRIVER_DIR", d.join("drivers-empty"))
            .env_remove("LIBVIRT_DEFAULT_URI");
        if !self.opts.sasl_users.is_empty() {
            cmd.env("SASL_CONF_PATH", d.join("sasl2"));
        }
        let label = describe(&cmd);
        let mut process = LabProcess::spawn_logging_to(cmd, &d.join(STDERR_FILE))?;

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = process.try_exit_status() {
                bail!(
                    "libvirtd exited ({status}) before listening on port {}: `{label}`\n\
                     log tail:\n{}",
                    self.port,
                    tail(&self.log_text(), 30)
                );
            }
            if self.listening(process.pid())? {
                self.process = Some(process);
                return Ok(());
            }
            if Instant::now() >= deadline {
                process.stop(Duration::from_secs(2));
                bail!(
                    "libvirtd not listening on port {} (IPv6: {}) after {READY_TIMEOUT:?}\n\
                     log tail:\n{}",
                    self.port,
                    self.ipv6,
                    tail(&self.log_text(), 30)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether process `pid` listens on the TLS port on every address it should. The PID
    /// matters: if another process took the port, it is listening but our daemon is not.
    fn listening(&self, pid: u32) -> Result<bool> {
        let out = run(Command::new(tool("ss"))
            .args(["-Hltnp"])
            .arg(format!("sport = :{}", self.port)))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let ours = |addr: &str| {
            text.lines().any(|l| {
                l.contains(&format!("{addr}:{}", self.port)) && l.contains(&format!("pid={pid},"))
            })
        };
        Ok(ours("127.0.0.1") && (!self.ipv6 || ours("[::1]")))
    }

    fn stop_process(&mut self) {
        if let Some(mut p) = self.process.take() {
            // The PID is our unreaped child, so it cannot belong to anyone else; comm is read
            // only to make a wrong wrapper visible in the log.
            if let Ok(comm) = fs::read_to_string(format!("/proc/{}/comm", p.pid())) {
                if comm.trim() != "libvirtd" && p.is_running() {
                    eprintln!(
                        "virtgate-testlab: stopping pid {} whose comm is {:?}, not libvirtd",
                        p.pid(),
                        comm.trim()
                    );
                }
            }
            p.stop(STOP_GRACE);
        }
    }

    /// Stops the daemon, gives it a new key and certificate from the same CA (`spec`), and
    /// starts it again on the same port: a host whose key changed.
    pub fn restart_with_server_cert(&mut self, spec: ServerCertSpec) -> Result<()> {
        self.stop_process();
        self.server = self.ca.issue_server(&spec)?;
        self.opts.server_cert = spec;
        self.server.write_server_files(
            &self.dir.path().join("pki"),
            &ca_file_pem(&self.ca, &self.opts.extra_client_cas),
        )?;
        // The port was ours a moment ago, but a client's connection in TIME_WAIT or a slow
        // exit can still block the bind briefly.
        let mut attempt = 0;
        loop {
            let seen = self.log_sizes();
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(_) if attempt < 5 && is_bind_error(&self.log_since(seen)) => {
                    attempt += 1;
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The TLS port (same on 127.0.0.1 and `[::1]`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the daemon also listens on `[::1]`.
    pub fn has_ipv6(&self) -> bool {
        self.ipv6
    }

    /// The daemon's PID.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(LabProcess::pid)
    }

    /// Scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's read-write UNIX socket (`unix_sock_dir/libvirt-sock`, 0700, no auth): what
    /// a host agent relays to.
    pub fn unix_socket(&self) -> PathBuf {
        self.dir.path().join("run/libvirt-sock")
    }

    /// libvirt `pkipath` directory of a client this daemon trusts.
    pub fn client_pki_dir(&self) -> PathBuf {
        self.dir.path().join("client")
    }

    /// The daemon's own `cacert.pem`, `servercert.pem`, `serverkey.pem`.
    pub fn server_pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// The CA that issued the daemon's and the client's certificates.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The daemon's current certificate and key (PEM, SPKI DER and SHA-256).
    pub fn server_cert(&self) -> &IssuedCert {
        &self.server
    }

    /// The certificate in [`Libvirtd::client_pki_dir`].
    pub fn client_cert(&self) -> &IssuedCert {
        &self.client
    }

    /// Issues another client certificate from this daemon's CA into a new pkipath directory
    /// inside the scratch dir, e.g. to test `tls_allowed_dn_list`.
    pub fn issue_client_pki_dir(&self, name: &str, spec: &ClientCertSpec) -> Result<PathBuf> {
        ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "bad pki dir name {name:?}"
        );
        let dir = self.dir.path().join(format!("client-{name}"));
        self.ca
            .issue_client(spec)?
            .write_client_files(&dir, self.ca.cert_pem())?;
        Ok(dir)
    }

    /// `test+tls://HOST:PORT/default?pkipath=…` (IPv6 literals get brackets).
    pub fn uri(&self, host: &str) -> String {
        let host = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) => format!("[{a}]"),
            _ => host.to_string(),
        };
        format!(
            "test+tls://{host}:{}/default?pkipath={}",
            self.port,
            self.client_pki_dir().display()
        )
    }

    /// [`Libvirtd::uri`] for 127.0.0.1.
    pub fn uri_v4(&self) -> String {
        self.uri("127.0.0.1")
    }

    /// [`Libvirtd::uri`] for `[::1]`.
    pub fn uri_v6(&self) -> String {
        self.uri("::1")
    }

    /// Path of the auth file with the first SASL user's credentials (`None` without SASL).
    pub fn auth_file(&self) -> Option<PathBuf> {
        (!self.opts.sasl_users.is_empty()).then(|| self.dir.path().join("auth.conf"))
    }

    /// Writes a libvirt auth.conf for `user` / `password` in the scratch dir and returns it.
    pub fn write_auth_file(&self, user: &str, password: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("auth-{user}.conf"));
        write_auth_conf(&path, user, password)?;
        Ok(path)
    }

    /// `virsh -c <uri_v4> ARGS` (with the first SASL user's auth file when SASL is on).
    pub fn virsh(&self, args: &[&str]) -> Result<Output> {
        self.virsh_at(&self.uri_v4(), args)
    }

    /// `virsh -c URI ARGS` with the default credentials.
    pub fn virsh_at(&self, uri: &str, args: &[&str]) -> Result<Output> {
        self.virsh_with_auth_file(uri, self.auth_file().as_deref(), args)
    }

    /// `virsh -c URI ARGS` with `LIBVIRT_AUTH_FILE` set to `auth_file` (unset for `None`);
    /// stdin is /dev/null so virsh can never prompt. Returns the output whatever the status.
    pub fn virsh_with_auth_file(
        &self,
        uri: &str,
        auth_file: Option<&Path>,
        args: &[&str],
    ) -> Result<Output> {
        let mut cmd = Command::new(tool("timeout"));
        cmd.args([CLIENT_TIMEOUT_SECS, "/usr/bin/virsh", "-c", uri])
            .args(args)
            .stdin(Stdio::null())
            .env_remove("LIBVIRT_DEFAULT_URI");
        match auth_file {
            Some(f) => cmd.env("LIBVIRT_AUTH_FILE", f),
            None => cmd.env_remove("LIBVIRT_AUTH_FILE"),
        };
        cmd.output()
            .with_context(|| format!("spawn `{}`", describe(&cmd)))
    }

    /// Runs `script` with Debian's `/usr/bin/python3` (the one python3-libvirt is installed
    /// for). The script finds the URIs, port, pkipath and SASL credentials in the variables of
    /// [`env`](mod@env); `LIBVIRT_AUTH_FILE` is removed (`libvirt.open()` cannot do SCRAM anyway: use
    /// `openAuth`). Returns the output whatever the status.
    pub fn python(&self, script: &str) -> Result<Output> {
        self.python_with_env(script, &[])
    }

    /// [`Libvirtd::python`] with extra environment variables for the script.
    pub fn python_with_env(&self, script: &str, vars: &[(&str, &str)]) -> Result<Output> {
        let mut cmd = Command::new(tool("timeout"));
        cmd.args([CLIENT_TIMEOUT_SECS, "/usr/bin/python3", "-c", script])
            .stdin(Stdio::null())
            .env(env::URI, self.uri_v4())
            .env(
                env::URI_V6,
                if self.ipv6 {
                    self.uri_v6()
                } else {
                    self.uri_v4()
                },
            )
            .env(env::URI_LOCALHOST, self.uri("localhost"))
            .env(env::PORT, self.port.to_string())
            .env(env::PKI_DIR, self.client_pki_dir())
            .env_remove("LIBVIRT_DEFAULT_URI");
        cmd.env_remove("LIBVIRT_AUTH_FILE");
        if let (Some(f), Some((user, pass))) = (self.auth_file(), self.opts.sasl_users.first()) {
            cmd.env(env::AUTH_FILE, f)
                .env(env::SASL_USER, user)
                .env(env::SASL_PASSWORD, pass);
        }
        cmd.envs(vars.iter().copied());
        cmd.output()
            .with_context(|| format!("spawn `{}`", describe(&cmd)))
    }

    /// The daemon's log file plus anything it wrote to stderr (across restarts).
    pub fn log_text(&self) -> String {
        self.log_since((0, 0))
    }

    fn log_sizes(&self) -> (u64, u64) {
        let size = |name: &str| {
            fs::metadata(self.dir.path().join(name))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        (size(LOG_FILE), size(STDERR_FILE))
    }

    /// Log and stderr text written after the byte offsets `since` (from [`Self::log_sizes`]),
    /// so a retry decision looks only at the latest attempt.
    fn log_since(&self, since: (u64, u64)) -> String {
        let read = |name: &str, from: u64| {
            fs::read(self.dir.path().join(name))
                .map(|b| {
                    let from = usize::try_from(from).unwrap_or(usize::MAX).min(b.len());
                    String::from_utf8_lossy(&b[from..]).into_owned()
                })
                .unwrap_or_default()
        };
        let mut s = read(LOG_FILE, since.0);
        let stderr = read(STDERR_FILE, since.1);
        if !stderr.trim().is_empty() {
            s.push_str("\n--- stderr ---\n");
            s.push_str(&stderr);
        }
        s
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.stop_process();
    }
}

fn is_bind_error(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("Unable to bind")
}

fn write_auth_conf(path: &Path, user: &str, password: &str) -> Result<()> {
    ensure!(
        !user.contains(['\n', '=']) && !password.contains('\n'),
        "user / password must be single-line"
    );
    write_file(
        path,
        &format!(
            "[credentials-lab]\nauthname={user}\npassword={password}\n\n\
             [auth-libvirt-default]\ncredentials=lab\n"
        ),
        0o600,
    )
}

/// Private cyrus-sasl config (`SASL_CONF_PATH`), sasldb and client auth file.
///
/// `mech_list` must be set: Debian's default list includes ANONYMOUS, which libvirt would
/// accept over TLS. Users are stored under the machine's host name as realm, which is what
/// libvirtd's `sasl_server_new("libvirt", NULL, NULL, …)` looks up.
fn setup_sasl(d: &Path, users: &[(String, String)]) -> Result<()> {
    let sasl = d.join("sasl2");
    let db = sasl.join("passwd.db");
    write_file(
        &sasl.join("libvirt.conf"),
        &format!("mech_list: scram-sha-256\nsasldb_path: {}\n", db.display()),
        0o644,
    )?;
    for (user, password) in users {
        let mut child = Command::new(tool("saslpasswd2"))
            .args(["-p", "-c", "-f"])
            .arg(&db)
            .args(["-a", "libvirt", user])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn saslpasswd2")?;
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(password.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "saslpasswd2 for {user} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::set_permissions(&db, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let (user, password) = &users[0];
    write_auth_conf(&d.join("auth.conf"), user, password)
}

/// The daemon's `ca_file`: its own CA, then any extra client CAs.
fn ca_file_pem(ca: &Ca, extra: &[String]) -> String {
    let mut pem = ca.cert_pem().to_string();
    for more in extra {
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(more);
    }
    pem
}
