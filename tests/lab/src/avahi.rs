//! A real avahi-daemon inside a lab node (`shared/notes/mdns-lab.md` §5), optionally with a
//! private D-Bus so `avahi-browse` / `avahi-publish` work.
//!
//! `ip netns exec` gives the daemon a private mount namespace; a tmpfs on `/run` and a bind
//! mount of our own service directory over `/etc/avahi/services` keep the host's files untouched
//! and let several daemons run side by side. Never start this outside a lab namespace (§0).

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::netns::Node;
use crate::pki::write_file;
use crate::process::{require_root_and_tools, run, tail, tool, LabProcess};

/// Tools this module needs.
pub const AVAHI_TOOLS: &[&str] = &[
    "ip",
    "sh",
    "mount",
    "timeout",
    "avahi-daemon",
    "avahi-browse",
    "avahi-publish",
    "dbus-daemon",
];

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A static service in avahi.service(5) format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFile {
    /// Instance name; with `replace_wildcards`, `%h` becomes the host name.
    pub name: String,
    /// Whether `%h` in `name` is expanded (it never is in TXT records).
    pub replace_wildcards: bool,
    /// Service type, e.g. `_libvirt._tcp`.
    pub service_type: String,
    /// Port.
    pub port: u16,
    /// TXT strings (`key=value`).
    pub txt: Vec<String>,
}

impl ServiceFile {
    /// `Virtualization Host %h`, `_libvirt._tcp` on `port` with TXT `hostname=<host_name>`,
    /// `uri=qemu+tls://<host_name>/system`, `version=1`: the advert libvirtd used to publish.
    pub fn libvirt(host_name: &str, port: u16) -> Self {
        ServiceFile {
            name: "Virtualization Host %h".to_string(),
            replace_wildcards: true,
            service_type: "_libvirt._tcp".to_string(),
            port,
            txt: vec![
                format!("hostname={host_name}"),
                format!("uri=qemu+tls://{host_name}/system"),
                "version=1".to_string(),
            ],
        }
    }

    fn to_xml(&self) -> String {
        let mut s = String::from(
            "<?xml version=\"1.0\" standalone='no'?>\n\
             <!DOCTYPE service-group SYSTEM \"avahi-service.dtd\">\n<service-group>\n",
        );
        let wild = if self.replace_wildcards { "yes" } else { "no" };
        let _ = writeln!(
            s,
            "  <name replace-wildcards=\"{wild}\">{}</name>",
            xml_escape(&self.name)
        );
        s.push_str("  <service>\n");
        let _ = writeln!(s, "    <type>{}</type>", xml_escape(&self.service_type));
        let _ = writeln!(s, "    <port>{}</port>", self.port);
        for t in &self.txt {
            let _ = writeln!(s, "    <txt-record>{}</txt-record>", xml_escape(t));
        }
        s.push_str("  </service>\n</service-group>\n");
        s
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// How to run avahi.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvahiOptions {
    /// Host name avahi announces (`<host_name>.local`).
    pub host_name: String,
    /// Static service files.
    pub services: Vec<ServiceFile>,
    /// Start a private dbus-daemon and run avahi with `enable-dbus=yes`; required for
    /// [`Avahi::browse`] and [`Avahi::publish`].
    pub with_dbus: bool,
}

impl AvahiOptions {
    /// No services, no D-Bus.
    pub fn new(host_name: &str) -> Self {
        AvahiOptions {
            host_name: host_name.to_string(),
            services: Vec::new(),
            with_dbus: false,
        }
    }
}

/// One resolved line (`=;…`) of `avahi-browse -rpt`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AvahiRecord {
    /// Interface name as seen in the browsing namespace (`eth0`).
    pub interface: String,
    /// `IPv4` or `IPv6` (the protocol the answer came over).
    pub protocol: String,
    /// Instance name, escapes decoded (`Virtualization Host h1`).
    pub name: String,
    /// Service type (`_libvirt._tcp`).
    pub service_type: String,
    /// Domain (`local`).
    pub domain: String,
    /// Target host (`h1.local`).
    pub host_name: String,
    /// Resolved address.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
    /// TXT strings, unquoted, in avahi's order.
    pub txt: Vec<String>,
}

impl AvahiRecord {
    /// Value of TXT key `key`, if present.
    pub fn txt_value(&self, key: &str) -> Option<&str> {
        self.txt
            .iter()
            .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Decodes avahi's label escapes: `\DDD` (decimal byte) and `\c` (literal `c`).
pub fn decode_label(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') as u32 * 100 + (b[i + 2] - b'0') as u32 * 10;
            let n = n + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(n) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        if b[i] == b'\\' && i + 1 < b.len() {
            out.push(b[i + 1]);
            i += 2;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits avahi's TXT rendering `"a=1" "b=2"` into unquoted strings (`\"`, `\\`, `\DDD`
/// decoded).
fn parse_txt(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut raw = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    raw.push('\\');
                    if let Some(n) = chars.next() {
                        raw.push(n);
                    }
                }
                '"' => break,
                c => raw.push(c),
            }
        }
        out.push(decode_label(&raw));
    }
    out
}

/// Parses the `=;` (resolved) lines of `avahi-browse -rptk` output; other lines are ignored.
pub fn parse_browse_output(text: &str) -> Vec<AvahiRecord> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("=;")?;
            let f: Vec<&str> = rest.splitn(9, ';').collect();
            if f.len() < 8 {
                return None;
            }
            Some(AvahiRecord {
                interface: f[0].to_string(),
                protocol: f[1].to_string(),
                name: decode_label(f[2]),
                service_type: f[3].to_string(),
                domain: f[4].to_string(),
                host_name: f[5].to_string(),
                // Link-local IPv6 comes as `fe80::…%eth0`; keep only the address.
                address: f[6].split('%').next()?.parse().ok()?,
                port: f[7].parse().ok()?,
                txt: f.get(8).map(|t| parse_txt(t)).unwrap_or_default(),
            })
        })
        .collect()
}

/// avahi-daemon (and optionally a private dbus-daemon) running in a lab node; both are stopped
/// by PID on drop.
pub struct Avahi {
    ns: String,
    host_name: String,
    bus_address: Option<String>,
    // Field order is drop order: avahi first, then its bus, then the files.
    daemon: LabProcess,
    dbus: Option<LabProcess>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Avahi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Avahi")
            .field("ns", &self.ns)
            .field("host_name", &self.host_name)
            .field("daemon", &self.daemon)
            .field("dbus", &self.dbus)
            .finish()
    }
}

impl Avahi {
    /// Starts avahi in `node` and waits (≤ 10 s) for "Server startup complete".
    pub fn start(node: &Node, opts: &AvahiOptions) -> Result<Avahi> {
        require_root_and_tools(AVAHI_TOOLS);
        ensure!(
            !opts.host_name.is_empty() && !opts.host_name.contains(['.', ' ', '/']),
            "bad avahi host name {:?}",
            opts.host_name
        );
        let dir = tempfile::Builder::new()
            .prefix("virtgate-lab-avahi-")
            .tempdir()?;
        let d = dir.path();
        let services = d.join("services");
        fs::create_dir(&services)?;
        for (i, svc) in opts.services.iter().enumerate() {
            write_file(
                &services.join(format!("svc{i}.service")),
                &svc.to_xml(),
                0o644,
            )?;
        }

        let (dbus, bus_address) = if opts.with_dbus {
            let (p, addr) = start_dbus(node, d)?;
            (Some(p), Some(addr))
        } else {
            (None, None)
        };

        let conf = d.join("avahi-daemon.conf");
        write_file(
            &conf,
            &format!(
                "[server]\nhost-name={}\ndomain-name=local\nuse-ipv4=yes\nuse-ipv6=yes\n\
                 allow-interfaces=eth0\nenable-dbus={}\nratelimit-interval-usec=1000000\n\
                 ratelimit-burst=1000\n[wide-area]\nenable-wide-area=no\n[publish]\n\
                 publish-hinfo=no\npublish-workstation=no\npublish-addresses=yes\n",
                opts.host_name,
                if opts.with_dbus { "yes" } else { "no" }
            ),
            0o644,
        )?;

        // Paths travel as positional parameters so no shell quoting is involved.
        let mut cmd = node.command("sh");
        cmd.arg("-c")
            .arg(
                "mount -t tmpfs tmpfs /run && mount --bind \"$1\" /etc/avahi/services && \
                 exec \"$2\" -f \"$3\" --no-drop-root --no-chroot --no-rlimits --no-proc-title \
                 --debug",
            )
            .arg("sh")
            .arg(&services)
            .arg(tool("avahi-daemon"))
            .arg(&conf);
        if let Some(addr) = &bus_address {
            cmd.env("DBUS_SYSTEM_BUS_ADDRESS", addr);
        }
        let mut daemon = LabProcess::spawn_logging_to(cmd, &d.join("avahi.log"))?;
        daemon
            .wait_for_stderr("Server startup complete", STARTUP_TIMEOUT)
            .with_context(|| format!("avahi-daemon in {}", node.ns))?;
        Ok(Avahi {
            ns: node.ns.clone(),
            host_name: opts.host_name.clone(),
            bus_address,
            daemon,
            dbus,
            dir,
        })
    }

    /// The configured host name (without `.local`).
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// `unix:path=…` of the private bus, when started `with_dbus`.
    pub fn bus_address(&self) -> Option<&str> {
        self.bus_address.as_deref()
    }

    /// Scratch directory (config, service files, logs, bus socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// avahi-daemon's log (its `--debug` stderr).
    pub fn log_text(&self) -> String {
        self.daemon.stderr_text()
    }

    /// The avahi-daemon process, e.g. to SIGTERM it and watch the goodbyes.
    pub fn daemon(&mut self) -> &mut LabProcess {
        &mut self.daemon
    }

    fn client(&self, program: &str) -> Result<Command> {
        let Some(addr) = &self.bus_address else {
            bail!(
                "avahi in {} runs without D-Bus; start it with_dbus",
                self.ns
            );
        };
        let mut c = Command::new(tool("ip"));
        c.args(["netns", "exec", &self.ns])
            .arg(program)
            .env("DBUS_SYSTEM_BUS_ADDRESS", addr);
        Ok(c)
    }

    /// One `avahi-browse -rptk TYPE` run (inside the namespace, so interface names are right),
    /// bounded to 10 s. `-t` stops at "all for now", which can come before the cache is full;
    /// prefer [`Avahi::browse`].
    pub fn browse_once(&self, service_type: &str) -> Result<Vec<AvahiRecord>> {
        let mut cmd = self.client("timeout")?;
        cmd.args(["10", "avahi-browse", "-rptk", service_type]);
        let out = run(&mut cmd)?;
        let mut records = parse_browse_output(&String::from_utf8_lossy(&out.stdout));
        records.sort();
        records.dedup();
        Ok(records)
    }

    /// Browses repeatedly (0.5 s apart, until `timeout`) until two consecutive runs agree on a
    /// non-empty result, and returns it; returns the last result (maybe empty) on timeout.
    pub fn browse(&self, service_type: &str, timeout: Duration) -> Result<Vec<AvahiRecord>> {
        let mut last: Option<Vec<AvahiRecord>> = None;
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.browse_once(service_type)?;
            if !now.is_empty() && last.as_ref() == Some(&now) {
                return Ok(now);
            }
            if Instant::now() >= deadline {
                return Ok(now);
            }
            last = Some(now);
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Browses repeatedly (0.5 s apart) until `done` accepts the records; fails on timeout with
    /// the last records and the avahi log tail.
    pub fn browse_until(
        &self,
        service_type: &str,
        timeout: Duration,
        mut done: impl FnMut(&[AvahiRecord]) -> bool,
    ) -> Result<Vec<AvahiRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.browse_once(service_type)?;
            if done(&now) {
                return Ok(now);
            }
            if Instant::now() >= deadline {
                bail!(
                    "avahi-browse {service_type} in {}: condition not met within {timeout:?}; \
                     last records: {now:#?}\navahi log tail:\n{}",
                    self.ns,
                    tail(&self.log_text(), 20)
                );
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Publishes a service through this avahi (`avahi-publish -s`) and waits until avahi
    /// confirms it ("Established under name"). The advert lives as long as the returned
    /// process; its SIGTERM makes avahi send goodbyes.
    pub fn publish(
        &self,
        name: &str,
        service_type: &str,
        port: u16,
        txt: &[&str],
    ) -> Result<LabProcess> {
        let mut cmd = self.client("avahi-publish")?;
        cmd.args(["-s", name, service_type, &port.to_string()])
            .args(txt);
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let log: PathBuf = self.dir.path().join(format!(
            "publish-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut p = LabProcess::spawn_logging_to(cmd, &log)?;
        p.wait_for_stderr("Established under name", STARTUP_TIMEOUT)
            .with_context(|| format!("avahi-publish {name:?} in {}", self.ns))?;
        Ok(p)
    }
}

/// Starts a private system-type dbus-daemon in `node` whose socket is `dir/bus`.
fn start_dbus(node: &Node, dir: &Path) -> Result<(LabProcess, String)> {
    let socket = dir.join("bus");
    let conf = dir.join("dbus.conf");
    let address = format!("unix:path={}", socket.display());
    write_file(
        &conf,
        &format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\n  \
             <type>system</type>\n  <listen>{address}</listen>\n  <auth>EXTERNAL</auth>\n  \
             <policy context=\"default\">\n    <allow user=\"*\"/> <allow own=\"*\"/> \
             <allow send_destination=\"*\"/> <allow receive_sender=\"*\"/>\n  </policy>\n\
             </busconfig>\n"
        ),
        0o644,
    )?;
    // Foreground (--nofork) so the PID we hold is the daemon's; it prints its address once the
    // socket is listening.
    let mut cmd = node.command("dbus-daemon");
    cmd.arg(format!("--config-file={}", conf.display())).args([
        "--nofork",
        "--nopidfile",
        "--print-address=1",
    ]);
    let p = LabProcess::spawn_logging_to(cmd, &dir.join("dbus.log"))?;
    p.wait_for_line(STARTUP_TIMEOUT, |l| l.starts_with("unix:"))
        .context("private dbus-daemon did not start")?;
    Ok((p, address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resolved_lines() {
        let text = "+;eth0;IPv4;Virtualization\\032Host\\032h2;_libvirt._tcp;local\n\
            =;eth0;IPv4;Virtualization\\032Host\\032h2;_libvirt._tcp;local;h2.local;10.250.0.12;\
            16514;\"version=1\" \"uri=qemu+tls://h2/system\" \"hostname=h2\"\n\
            =;eth0;IPv6;caf\\195\\169\\046x;_libvirt._tcp;local;h2.local;fd00:250::12;16514;\n";
        let r = parse_browse_output(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].name, "Virtualization Host h2");
        assert_eq!(r[0].address, "10.250.0.12".parse::<IpAddr>().unwrap());
        assert_eq!(
            r[0].txt,
            ["version=1", "uri=qemu+tls://h2/system", "hostname=h2"]
        );
        assert_eq!(r[0].txt_value("uri"), Some("qemu+tls://h2/system"));
        assert_eq!(r[1].name, "café.x");
        assert!(r[1].txt.is_empty());
    }

    #[test]
    fn decodes_escapes() {
        assert_eq!(decode_label("a\\.b\\\\c\\032d"), "a.b\\c d");
        assert_eq!(parse_txt(r#""a=\"q\"" "b=\\""#), ["a=\"q\"", "b=\\"]);
    }
}
