//! Spawned lab programs ([`LabProcess`]), PID-only signalling and tool lookup.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{self, Signal};
use nix::unistd::{Pid, Uid};

/// Packages the lab needs; quoted in the panic message so the fix is obvious from a CI log.
const PACKAGES: &str = "iproute2 util-linux avahi-daemon avahi-utils dbus libvirt-daemon \
                        libvirt-clients python3-libvirt gnutls-bin sasl2-bin libsasl2-modules \
                        libsasl2-modules-db";

/// Root's PATH on Debian has the sbin dirs, but a developer's PATH may not; the daemons we need
/// (`ip`, `libvirtd`, `avahi-daemon`, `saslpasswd2`) all live there.
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Finds an executable by name (PATH plus the sbin directories) or checks an absolute path.
pub fn tool_path(name: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// Like [`tool_path`], but falls back to the bare name so the spawn error names the tool.
pub(crate) fn tool(name: &str) -> PathBuf {
    tool_path(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Panics unless we run as root and every tool (a name on PATH or an absolute path) exists.
///
/// Real-peer tests call this first: a missing environment must fail the test loudly rather than
/// skip it, or CI would go green without having exercised anything.
pub fn require_root_and_tools(tools: &[&str]) {
    let mut problems = Vec::new();
    if !Uid::effective().is_root() {
        problems.push(format!(
            "not running as root (euid {}); network namespaces, mounts and libvirtd need root",
            Uid::effective()
        ));
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| tool_path(t).is_none())
        .collect();
    if !missing.is_empty() {
        problems.push(format!("missing tools: {}", missing.join(", ")));
    }
    if !problems.is_empty() {
        panic!(
            "real-peer test environment is incomplete: {}. Run ./scripts/test.sh, which installs \
             {PACKAGES} (with /usr/sbin/policy-rc.d denying service starts) and runs the tests as \
             root.",
            problems.join("; ")
        );
    }
}

/// Panics unless Debian's `/usr/bin/python3` can import every module (e.g. `libvirt`).
///
/// It must be that interpreter: python3-libvirt is installed for it, and a pyenv `python3` on
/// PATH cannot see it.
pub fn require_python3_modules(modules: &[&str]) {
    require_root_and_tools(&["/usr/bin/python3"]);
    for module in modules {
        let out = Command::new("/usr/bin/python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .expect("run /usr/bin/python3");
        if !out.status.success() {
            panic!(
                "/usr/bin/python3 cannot import {module}: {}. Run ./scripts/test.sh, which \
                 installs {PACKAGES}.",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// `program arg arg …` for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs to completion and fails with the command line, status and both outputs on a non-zero
/// exit.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub(crate) fn send_signal(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        if raw > 0 {
            let _ = signal::kill(Pid::from_raw(raw), sig);
        }
    }
}

/// Last `n` lines of a text, for error messages that must stay readable.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A program the lab started, owned by PID.
///
/// stdout is read line by line on a background thread into a channel of `(arrival time, line)`;
/// stderr goes to a log file (see [`LabProcess::stderr_text`]). Dropping it sends SIGTERM, waits
/// up to 2 s and then sends SIGKILL, always by the PID of our own (not yet reaped) child, so the
/// PID cannot have been reused by an unrelated process.
pub struct LabProcess {
    label: String,
    child: Child,
    exit: Option<ExitStatus>,
    // Behind a mutex so a LabProcess (and daemons holding one) can be shared across threads.
    lines: Mutex<Receiver<(Instant, String)>>,
    stderr_path: PathBuf,
    _stderr_dir: Option<tempfile::TempDir>,
}

impl LabProcess {
    /// Spawns `cmd` with stdin from /dev/null, stdout captured and stderr in a fresh temp dir.
    pub fn spawn(cmd: Command) -> Result<LabProcess> {
        let dir = tempfile::Builder::new()
            .prefix("virtgate-lab-proc-")
            .tempdir()
            .context("create temp dir for stderr")?;
        let path = dir.path().join("stderr.log");
        let mut p = Self::spawn_logging_to(cmd, &path)?;
        p._stderr_dir = Some(dir);
        Ok(p)
    }

    /// Spawns `cmd` with stderr appended to `stderr_path` (the caller keeps that file).
    pub fn spawn_logging_to(mut cmd: Command, stderr_path: &Path) -> Result<LabProcess> {
        let label = describe(&cmd);
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(stderr_path)
            .with_context(|| format!("open {}", stderr_path.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn `{label}`"))?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name(format!("lab-stdout-{}", child.id()))
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf);
                            let line = line.trim_end_matches(['\n', '\r']).to_string();
                            if tx.send((Instant::now(), line)).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
            .context("spawn stdout reader thread")?;
        Ok(LabProcess {
            label,
            child,
            exit: None,
            lines: Mutex::new(rx),
            stderr_path: stderr_path.to_path_buf(),
            _stderr_dir: None,
        })
    }

    fn receiver(&self) -> std::sync::MutexGuard<'_, Receiver<(Instant, String)>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The child's PID (with `ip netns exec`, `unshare` or `sh -c 'exec …'` wrappers this is the
    /// final program, since all of them exec rather than fork).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Next stdout line, or `None` after `timeout` or once stdout is closed and drained.
    pub fn recv_line_timeout(&self, timeout: Duration) -> Option<(Instant, String)> {
        self.receiver().recv_timeout(timeout).ok()
    }

    /// Collects stdout lines until one satisfies `stop` (included) or `deadline` passes.
    pub fn lines_until(
        &self,
        deadline: Instant,
        mut stop: impl FnMut(&str) -> bool,
    ) -> Vec<(Instant, String)> {
        let mut seen = Vec::new();
        let lines = self.receiver();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let done = stop(&line);
                    seen.push((at, line));
                    if done {
                        return seen;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return seen,
            }
        }
    }

    /// Waits for a stdout line satisfying `pred`; the error lists the lines skipped and the
    /// stderr tail, which is usually all one needs to see why.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        pred: impl FnMut(&str) -> bool,
    ) -> Result<(Instant, String)> {
        let mut pred = pred;
        let mut matched = false;
        let seen = self.lines_until(Instant::now() + timeout, |l| {
            matched = pred(l);
            matched
        });
        if matched {
            return Ok(seen.last().cloned().expect("matched line is recorded"));
        }
        let skipped: Vec<&str> = seen.iter().map(|(_, l)| l.as_str()).collect();
        bail!(
            "`{}`: no matching stdout line within {:?}; stdout lines seen: {:?}; stderr tail:\n{}",
            self.label,
            timeout,
            skipped,
            tail(&self.stderr_text(), 30)
        )
    }

    /// Polls the stderr log until it contains `needle`; fails early if the process exits.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr_text().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_exit_status() {
                bail!(
                    "`{}` exited ({status}) before logging {needle:?}; stderr tail:\n{}",
                    self.label,
                    tail(&self.stderr_text(), 30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` did not log {needle:?} within {timeout:?}; stderr tail:\n{}",
                    self.label,
                    tail(&self.stderr_text(), 30)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything written to stderr so far (lossy UTF-8).
    pub fn stderr_text(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Path of the stderr log.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The exit status if the child has exited (reaps it), `None` while it runs.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// SIGTERM without waiting.
    pub fn terminate(&mut self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGKILL without waiting (a crash, as far as peers can tell).
    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
    }

    /// Freezes the child with SIGSTOP and returns once every one of its threads has stopped.
    /// `kill` only queues the signal: a thread woken by I/O meanwhile could still run user
    /// code (answer a call) until the group stop reaches it. Panics after `timeout`.
    pub fn freeze(&mut self, timeout: Duration) {
        self.signal(Signal::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.pid());
        let deadline = Instant::now() + timeout;
        loop {
            let states: Vec<String> = fs::read_dir(&tasks)
                .map(|dir| {
                    dir.flatten()
                        .filter_map(|t| fs::read_to_string(t.path().join("stat")).ok())
                        .filter_map(|stat| {
                            // "pid (comm) S ...": the state follows the last ')'.
                            stat.rsplit_once(')')
                                .and_then(|(_, rest)| rest.split_whitespace().next())
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !states.is_empty() && states.iter().all(|s| s == "T") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {timeout:?} after SIGSTOP (thread states {states:?})",
                self.label
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `sig` unless the child has already been reaped (its PID may be reused then).
    pub fn signal(&mut self, sig: Signal) {
        if self.try_exit_status().is_none() {
            send_signal(self.pid(), sig);
        }
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, up to `grace` for a clean exit, then SIGKILL; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.terminate();
        if let Some(s) = self.wait_timeout(grace) {
            return Some(s);
        }
        self.kill9();
        if self.exit.is_none() {
            self.exit = self.child.wait().ok();
        }
        self.exit
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

impl std::fmt::Debug for LabProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabProcess")
            .field("pid", &self.child.id())
            .field("label", &self.label)
            .field("exit", &self.exit)
            .finish()
    }
}
