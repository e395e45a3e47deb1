//! Running commands inside a host's network namespace: long-lived [`Process`]es
//! (output to a log file) and run-to-completion commands returning [`Output`].

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::topology::Host;
use crate::util;

/// Default time limit for [`HostCommand::output`] / [`Host::run`].
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Poll interval used when waiting for processes.
const POLL: Duration = Duration::from_millis(20);

/// A signal that can be sent to a [`Process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `SIGHUP`.
    Hup,
    /// `SIGINT`.
    Int,
    /// `SIGQUIT`.
    Quit,
    /// `SIGKILL`.
    Kill,
    /// `SIGUSR1`.
    Usr1,
    /// `SIGUSR2`.
    Usr2,
    /// `SIGTERM`.
    Term,
    /// `SIGCONT`.
    Cont,
    /// `SIGSTOP`.
    Stop,
}

impl Signal {
    /// The signal name without the `SIG` prefix, as understood by `kill -s`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Kill => "KILL",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Term => "TERM",
            Signal::Cont => "CONT",
            Signal::Stop => "STOP",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// Shared state of a spawned process; also referenced by the topology for cleanup.
pub(crate) struct ProcInner {
    pub(crate) pid: u32,
    pub(crate) label: String,
    pub(crate) cmdline: String,
    pub(crate) log_path: PathBuf,
    child: Mutex<Child>,
}

impl ProcInner {
    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Non-blocking: the exit status if the process has exited (reaps it).
    pub(crate) fn try_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }
}

/// Handle to a long-running process started with [`Host::spawn`] or
/// [`HostCommand::spawn`].
///
/// The process runs in its own process group (pgid = pid) with stdout and
/// stderr appended to [`Process::log_path`]. Dropping the handle does **not**
/// stop the process; the owning [`crate::Topology`] terminates every process
/// group it started when it is dropped. Handles are cheap to clone.
#[derive(Clone)]
pub struct Process {
    inner: Arc<ProcInner>,
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.inner.pid)
            .field("label", &self.inner.label)
            .field("log_path", &self.inner.log_path)
            .finish()
    }
}

impl Process {
    /// Process id (also the process-group id) of the spawned command.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Human-readable label, `"<host>/<log name>"`.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The command line as started (after the `ip netns exec` / `setpriv` wrappers).
    pub fn cmdline(&self) -> &str {
        &self.inner.cmdline
    }

    /// Path of the log file receiving the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.inner.log_path
    }

    /// Current contents of the log file (lossy UTF-8; empty if unreadable).
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.inner.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the process has already exited, without blocking.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.inner.try_status()
    }

    /// Whether the process is still running (has not exited).
    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `sig` to the process itself (not its group).
    ///
    /// Fails if the process has already exited (its pid may then belong to
    /// someone else) or if `kill` fails.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.send(sig, false)
    }

    /// Sends `sig` to the whole process group of the process (pgid = pid).
    ///
    /// Fails if the group leader has already exited.
    pub fn signal_group(&self, sig: Signal) -> Result<()> {
        self.send(sig, true)
    }

    fn send(&self, sig: Signal, group: bool) -> Result<()> {
        // Holding the lock while signalling guarantees the pid is not reaped
        // (and thus not reusable) in between the liveness check and the kill.
        let mut child = self.inner.child();
        if let Some(status) = child.try_wait().ok().flatten() {
            bail!(
                "cannot send {sig} to {} (pid {}): already exited with {status}",
                self.inner.label,
                self.inner.pid
            );
        }
        let target = if group {
            format!("-{}", self.inner.pid)
        } else {
            self.inner.pid.to_string()
        };
        util::kill(sig.name(), &target)
            .with_context(|| format!("sending {sig} to {}", self.inner.label))
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Gracefully stops the process group: `SIGTERM`, then `SIGKILL` if the
    /// leader has not exited after `grace`. Returns the leader's exit status
    /// (`None` only if it could not be reaped even after `SIGKILL`).
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_status() {
            return Some(status);
        }
        let _ = self.signal_group(Signal::Term);
        let _ = self.signal_group(Signal::Cont);
        if let Some(status) = self.wait_exit(grace) {
            kill_group_if_alive(self.inner.pid);
            return Some(status);
        }
        self.kill()
    }

    /// Kills the process group with `SIGKILL` and waits (up to 5 s) for the leader.
    pub fn kill(&self) -> Option<ExitStatus> {
        let _ = self.signal_group(Signal::Kill);
        let status = self.wait_exit(Duration::from_secs(5));
        kill_group_if_alive(self.inner.pid);
        status
    }

    /// Waits until the log file contains `needle`.
    ///
    /// Fails after `timeout`, or as soon as the process exits without the
    /// needle having appeared; the error includes the log contents.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_contents().contains(needle) {
                return Ok(());
            }
            let exited = self.try_status();
            if exited.is_some() && self.log_contents().contains(needle) {
                return Ok(());
            }
            if exited.is_some() || Instant::now() >= deadline {
                let why = match exited {
                    Some(status) => format!("process exited with {status}"),
                    None => format!("not seen within {timeout:?}"),
                };
                bail!(
                    "{}: waiting for {needle:?} in log: {why}\n{}",
                    self.inner.label,
                    self.describe_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A multi-line description of the process state plus the tail of its log,
    /// suitable for error messages.
    pub fn describe_log(&self) -> String {
        let state = match self.try_status() {
            Some(status) => format!("exited with {status}"),
            None => "still running".to_string(),
        };
        let contents = self.log_contents();
        let (skipped, tail) = util::tail_lines(&contents, 100);
        let mut s = format!(
            "--- {} (pid {}, {state}): `{}`\n--- log {}",
            self.inner.label,
            self.inner.pid,
            self.inner.cmdline,
            self.inner.log_path.display()
        );
        if skipped > 0 {
            s.push_str(&format!(" ({skipped} earlier lines omitted)"));
        }
        s.push_str(":\n");
        s.push_str(tail);
        if !tail.is_empty() && !tail.ends_with('\n') {
            s.push('\n');
        }
        s.push_str("--- end of log");
        s
    }

    pub(crate) fn from_inner(inner: Arc<ProcInner>) -> Self {
        Process { inner }
    }
}

/// `SIGKILL`s the group `pgid` if any non-zombie member remains.
fn kill_group_if_alive(pgid: u32) {
    if util::live_process_groups().contains(&pgid) {
        let _ = util::kill("KILL", &format!("-{pgid}"));
    }
}

/// Terminates all given process groups: `SIGTERM` (+`SIGCONT`), wait up to
/// `grace` for them to disappear, then `SIGKILL` the survivors, then reap the
/// leaders. Never panics.
pub(crate) fn terminate_all(procs: &[Arc<ProcInner>], grace: Duration) {
    if procs.is_empty() {
        return;
    }
    let pgids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
    let alive = |pgids: &[u32]| -> Vec<u32> {
        let live = util::live_process_groups();
        pgids.iter().copied().filter(|g| live.contains(g)).collect()
    };
    let wait_gone = |pgids: &[u32], limit: Duration| -> Vec<u32> {
        let deadline = Instant::now() + limit;
        loop {
            let remaining = alive(pgids);
            if remaining.is_empty() || Instant::now() >= deadline {
                return remaining;
            }
            std::thread::sleep(POLL);
        }
    };

    let running = alive(&pgids);
    for g in &running {
        let _ = util::kill("TERM", &format!("-{g}"));
        let _ = util::kill("CONT", &format!("-{g}"));
    }
    let survivors = wait_gone(&running, grace);
    for g in &survivors {
        let _ = util::kill("KILL", &format!("-{g}"));
    }
    let stuck = wait_gone(&survivors, Duration::from_secs(5));
    for g in stuck {
        eprintln!("bearing-e2e: process group {g} survived SIGKILL");
    }
    for p in procs {
        // Reap the leader (it is a zombie by now unless stuck in the kernel).
        let deadline = Instant::now() + Duration::from_secs(1);
        while p.try_status().is_none() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }
}

/// Result of a command run to completion with [`HostCommand::output`] / [`Host::run`].
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status of the command.
    pub status: ExitStatus,
    /// Standard output decoded as (lossy) UTF-8.
    pub stdout: String,
    /// Standard error decoded as (lossy) UTF-8.
    pub stderr: String,
    /// Raw standard output bytes.
    pub stdout_bytes: Vec<u8>,
    /// The command line that was run (for messages).
    pub cmdline: String,
}

impl Output {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code, or `None` if the command was killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Returns `self` if the command succeeded, else an error with its output.
    pub fn check(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            Err(anyhow!(
                "`{}` failed with {}\nstdout:\n{}\nstderr:\n{}",
                self.cmdline,
                self.status,
                util::truncate(&self.stdout, 8192),
                util::truncate(&self.stderr, 8192)
            ))
        }
    }
}

/// Builder for a command run inside a host's network namespace, created by
/// [`Host::command`].
///
/// The command is executed as `ip netns exec <netns> [setpriv ...] program args...`,
/// inheriting this process's environment plus any [`HostCommand::env`] additions.
#[must_use = "a HostCommand does nothing until spawn() or output() is called"]
pub struct HostCommand<'h> {
    host: &'h Host,
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    uid: Option<u32>,
    gid: Option<u32>,
    cwd: Option<PathBuf>,
    log_name: Option<String>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl<'h> HostCommand<'h> {
    pub(crate) fn new(host: &'h Host, program: &OsStr) -> Self {
        HostCommand {
            host,
            program: program.to_os_string(),
            args: Vec::new(),
            envs: Vec::new(),
            uid: None,
            gid: None,
            cwd: None,
            log_name: None,
            stdin: None,
            timeout: DEFAULT_RUN_TIMEOUT,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Runs the command as `uid` (and, unless [`HostCommand::gid`] is given,
    /// gid = uid) with supplementary groups cleared, via `setpriv`.
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// Sets the gid used together with [`HostCommand::uid`].
    pub fn gid(mut self, gid: u32) -> Self {
        self.gid = Some(gid);
        self
    }

    /// Sets the working directory of the command.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Name used in the log file name and process label (default: the
    /// program's file name). Only used by [`HostCommand::spawn`].
    pub fn log_name(mut self, name: impl Into<String>) -> Self {
        self.log_name = Some(name.into());
        self
    }

    /// Bytes written to the command's stdin (then closed). Only used by
    /// [`HostCommand::output`]; spawned processes get `/dev/null`.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Time limit for [`HostCommand::output`] (default 30 s). On expiry the
    /// command's process group is killed and `output` returns an error.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command line that will be run inside the namespace (without the
    /// `ip netns exec` prefix).
    fn inner_cmdline(&self) -> String {
        util::display_cmdline(&self.program, &self.args)
    }

    fn build(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.arg("netns").arg("exec").arg(self.host.netns());
        if self.uid.is_some() || self.gid.is_some() {
            let uid = self.uid.unwrap_or(0);
            let gid = self.gid.unwrap_or(uid);
            cmd.arg("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--");
        }
        cmd.arg(&self.program).args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        // Own process group, so the whole tree can be signalled and so the
        // terminal's Ctrl-C does not reach it directly.
        cmd.process_group(0);
        cmd
    }

    /// Starts the command in the background with stdout+stderr appended to a
    /// fresh log file in the topology's log directory.
    pub fn spawn(self) -> Result<Process> {
        let shared = self.host.shared();
        shared.ensure_open()?;
        let base = self.log_name.clone().unwrap_or_else(|| {
            Path::new(&self.program)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "process".to_string())
        });
        let safe: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let seq = shared.next_seq();
        let log_path = shared
            .logs_dir()
            .join(format!("{seq:03}-{}-{safe}.log", self.host.name()));
        let log = File::create(&log_path)
            .with_context(|| format!("creating log file {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating log file handle")?;
        let cmdline = self.inner_cmdline();
        let label = format!("{}/{}", self.host.name(), base);

        let mut cmd = self.build();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning `{cmdline}` in netns {}", self.host.netns()))?;
        let inner = Arc::new(ProcInner {
            pid: child.id(),
            label,
            cmdline: cmdline.clone(),
            log_path,
            child: Mutex::new(child),
        });
        shared.register(inner.clone());
        shared.log_command(
            self.host.name(),
            &cmdline,
            &format!(
                "spawned pid {} -> {}",
                inner.pid,
                inner
                    .log_path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
            ),
        );
        Ok(Process { inner })
    }

    /// Runs the command to completion (bounded by [`HostCommand::timeout`])
    /// and returns its output. A non-zero exit is *not* an error; use
    /// [`Output::check`] for that.
    pub fn output(self) -> Result<Output> {
        let shared = self.host.shared();
        shared.ensure_open()?;
        let cmdline = self.inner_cmdline();
        let mut cmd = self.build();
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running `{cmdline}` in netns {}", self.host.netns()))?;
        let pid = child.id();

        if let (Some(bytes), Some(mut stdin)) = (self.stdin.clone(), child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        let stdout = collect(child.stdout.take());
        let stderr = collect(child.stderr.take());

        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    let _ = util::kill("KILL", &format!("-{pid}"));
                    let _ = child.wait();
                    return Err(e).context(format!("waiting for `{cmdline}`"));
                }
            }
        };
        let Some(status) = status else {
            let _ = util::kill("KILL", &format!("-{pid}"));
            let _ = child.wait();
            let out = stdout.finish(Duration::from_millis(500));
            let err = stderr.finish(Duration::from_millis(500));
            let msg = format!("timed out after {:?}; killed", self.timeout);
            shared.log_command(self.host.name(), &cmdline, &msg);
            bail!(
                "`{cmdline}` in netns {} timed out after {:?}\nstdout so far:\n{}\nstderr so far:\n{}",
                self.host.netns(),
                self.timeout,
                util::truncate(&String::from_utf8_lossy(&out), 8192),
                util::truncate(&String::from_utf8_lossy(&err), 8192)
            );
        };
        // A backgrounded grandchild may keep the pipes open; don't wait forever.
        let out = stdout.finish(Duration::from_secs(2));
        let err = stderr.finish(Duration::from_secs(2));
        let output = Output {
            status,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            stdout_bytes: out,
            cmdline: cmdline.clone(),
        };
        shared.log_command(
            self.host.name(),
            &cmdline,
            &format!(
                "{}\n  stdout: {}\n  stderr: {}",
                output.status,
                util::truncate(output.stdout.trim_end(), 2000),
                util::truncate(output.stderr.trim_end(), 2000)
            ),
        );
        Ok(output)
    }
}

/// Background reader for a child pipe.
struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    done: std::sync::mpsc::Receiver<()>,
}

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> Collector {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(mut pipe) = pipe {
        let buf = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]),
                }
            }
            let _ = tx.send(());
        });
    }
    Collector { buf, done: rx }
}

impl Collector {
    /// Waits up to `limit` for EOF, then returns what has been read.
    fn finish(self, limit: Duration) -> Vec<u8> {
        let _ = self.done.recv_timeout(limit);
        let mut guard = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *guard)
    }
}
