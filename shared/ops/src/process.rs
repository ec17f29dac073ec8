//! Running the workspace's binaries as child processes: one mechanism for `rigctl up`, the
//! bench's workers and the whole-system tests, each of which keeps its own policy (what to do
//! with the output, when to stop, whether to restart nothing).
//!
//! What it does: spawn a binary with an environment (optionally cleaned of the operator's
//! `RIG_…` settings and `DATABASE_URL`, so a child sees only what it is given), send its output
//! to a file, to a channel of lines (for a caller that prefixes them), or nowhere; signal it
//! (never a pid that is no longer our child's); wait for its exit with a deadline; stop it with
//! SIGTERM then SIGKILL; and, on drop, do what the caller chose. It also finds the workspace's
//! binaries beside the running executable and builds stale ones under `cargo`.

use anyhow::{bail, Context};
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// Where a child's stdout and stderr go.
#[derive(Debug, Clone)]
pub enum Output {
    /// Discarded.
    Null,
    /// Both into this file (created, or truncated).
    File(PathBuf),
    /// Line by line, as `(process name, line)`, from a thread per stream; the receiver decides
    /// how to show them (`rigctl up` prefixes each with the process's name).
    Lines(Sender<(String, String)>),
}

/// What dropping a [`Supervised`] still running does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrop {
    /// Nothing: the caller stops it explicitly (or lets it outlive the value).
    Leave,
    /// SIGKILL, then reap.
    Kill,
    /// SIGTERM, up to this grace period for a clean exit, then SIGKILL.
    Terminate(Duration),
}

/// How to start one child process.
#[derive(Debug)]
pub struct Spawn {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    isolated: bool,
    own_group: bool,
    output: Output,
    on_drop: OnDrop,
}

impl Spawn {
    /// `program`, known as `name` in messages and output lines. By default: inherits the
    /// environment, output discarded, same process group, left running on drop.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Spawn {
        Spawn {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            isolated: false,
            own_group: false,
            output: Output::Null,
            on_drop: OnDrop::Leave,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Spawn
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Spawn {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Spawn
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Drops every `RIG_…` variable and `DATABASE_URL` of this process's environment from the
    /// child's, so only what is given with [`Spawn::env`] configures it.
    pub fn isolated(mut self) -> Spawn {
        self.isolated = true;
        self
    }

    /// The child leads a process group of its own: a Ctrl-C at the terminal reaches only the
    /// parent, which then stops its children in order; and stopping it reaches its whole group.
    pub fn own_process_group(mut self) -> Spawn {
        self.own_group = true;
        self
    }

    pub fn output(mut self, output: Output) -> Spawn {
        self.output = output;
        self
    }

    pub fn on_drop(mut self, on_drop: OnDrop) -> Spawn {
        self.on_drop = on_drop;
        self
    }

    pub fn spawn(self) -> anyhow::Result<Supervised> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdin(Stdio::null());
        if self.isolated {
            for (k, _) in std::env::vars_os() {
                let name = k.to_string_lossy();
                if name.starts_with("RIG_") || name == "DATABASE_URL" {
                    cmd.env_remove(&k);
                }
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let log = match &self.output {
            Output::Null => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                None
            }
            Output::File(path) => {
                let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
                cmd.stdout(file.try_clone()?).stderr(file);
                Some(path.clone())
            }
            Output::Lines(_) => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                None
            }
        };
        if self.own_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {} ({})", self.name, self.program.display()))?;
        if let Output::Lines(tx) = &self.output {
            forward_lines(&mut child, &self.name, tx);
        }
        Ok(Supervised {
            name: self.name,
            child,
            log,
            own_group: self.own_group,
            on_drop: self.on_drop,
        })
    }
}

/// A thread per output stream sends each line with the process's name, until the stream ends
/// (the child exited) or nobody listens any more.
fn forward_lines(child: &mut Child, name: &str, tx: &Sender<(String, String)>) {
    let out = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let err = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    for stream in [out, err].into_iter().flatten() {
        let (tx, name) = (tx.clone(), name.to_owned());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send((name.clone(), line)).is_err() {
                    break;
                }
            }
        });
    }
}

/// A running child process (see [`Spawn`]).
#[derive(Debug)]
pub struct Supervised {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    own_group: bool,
    on_drop: OnDrop,
}

impl Supervised {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its output goes to, with [`Output::File`].
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Its output so far, with [`Output::File`] (empty otherwise).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The last `n` lines of its output, with [`Output::File`].
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Sends `sig` to the process, unless it has already been reaped.
    pub fn signal(&self, sig: i32) {
        self.send(sig, false);
    }

    /// Sends `sig` to the process's group when it leads one of its own, else to the process.
    pub fn signal_group(&self, sig: i32) {
        self.send(sig, self.own_group);
    }

    fn send(&self, sig: i32, group: bool) {
        // Once reaped, the pid may belong to someone else's process (pids wrap): never signal
        // it. `waitid` with WNOWAIT only looks, and fails with ECHILD once the child is reaped;
        // a live or zombie child keeps its pid, and only `&mut self` methods reap.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: waitid writes into the zeroed siginfo we own; kill signals our own child (or
        // the group it leads, whose id is its pid and stays reserved while it is unreaped).
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            if libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) != 0 {
                return;
            }
            libc::kill(if group { -pid } else { pid }, sig);
        }
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Whether it still runs; an error naming it, with the end of its log, once it exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log ends with:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Waits until it exits or `deadline` passes; its status, or `None` at the deadline.
    pub fn wait_until(&mut self, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (to its group when it leads one) and reap.
    pub fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, then up to `grace` for it to exit; SIGKILL after that. Its exit status, and
    /// whether it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> std::io::Result<(ExitStatus, bool)> {
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_until(Instant::now() + grace)? {
            return Ok((status, false));
        }
        self.signal_group(libc::SIGKILL);
        Ok((self.child.wait()?, true))
    }

    /// Polls `ready` until it says yes, failing early if the process exits and after `timeout`.
    pub async fn wait_ready<F, Fut>(&mut self, what: &str, timeout: Duration, mut ready: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not {what} within {timeout:?}; its log ends with:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        match self.on_drop {
            OnDrop::Leave => {}
            OnDrop::Kill => self.kill(),
            OnDrop::Terminate(grace) => {
                if let Ok((_, true)) = self.stop(grace) {
                    eprintln!("{} did not stop within {grace:?} of SIGTERM; killed it", self.name);
                }
            }
        }
    }
}

/// SIGTERM to every process first, so they stop in parallel; then waits for each until a shared
/// deadline `grace` away, and SIGKILLs whatever is left. Reaps them all; returns the names of
/// those that had to be killed.
pub fn stop_all(procs: &mut [Supervised], grace: Duration) -> Vec<String> {
    for p in procs.iter() {
        p.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let mut killed = Vec::new();
    for p in procs.iter_mut() {
        if let Ok(None) = p.wait_until(deadline) {
            killed.push(p.name.clone());
            p.kill();
        }
    }
    killed
}

/// The directory of the running executable, where cargo puts the workspace's binaries; for a
/// test executable (in `target/<profile>/deps`), the profile directory above it.
pub fn binary_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find this executable")?;
    let dir = exe.parent().context("this executable has no directory")?;
    Ok(match dir.file_name() {
        Some(d) if d == "deps" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    })
}

/// The workspace binary `name` beside the running executable (the same cargo profile), else
/// `name` as is, for a lookup on PATH.
pub fn sibling_binary(name: &str) -> PathBuf {
    match binary_dir() {
        Ok(dir) if dir.join(name).exists() => dir.join(name),
        _ => PathBuf::from(name),
    }
}

/// Those of `names` missing from `dir` or older than the running executable.
pub fn stale_binaries<'a>(dir: &Path, names: &[&'a str]) -> Vec<&'a str> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mine = std::env::current_exe().ok().and_then(|e| modified(&e));
    names
        .iter()
        .copied()
        .filter(|b| match (modified(&dir.join(b)), mine) {
            (None, _) => true,
            (Some(t), Some(m)) => t < m,
            (Some(_), None) => false,
        })
        .collect()
}

/// `cargo build -p <name> --bin <name>` for each of `names` (package and binary are named
/// alike), in the profile `dir` belongs to, with the `cargo` that runs us (`CARGO`).
pub fn cargo_build(cargo: &str, dir: &Path, names: &[&str], quiet: bool, cwd: Option<&Path>) -> anyhow::Result<()> {
    let mut cmd = Command::new(cargo);
    cmd.arg("build");
    // Under `cargo run`, this process holds the variables Cargo sets for the program it runs
    // (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, …). Passed on, they reach build scripts that watch
    // them (ring's watches CARGO_MANIFEST_DIR), which then run again and recompile everything
    // above them: TLS, the HTTP client and rigctl itself, a second time on a newcomer's first run.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_by_cargo_for_a_crate) {
            cmd.env_remove(key);
        }
    }
    if quiet {
        cmd.arg("--quiet");
    }
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    for b in names {
        cmd.arg("-p").arg(b).arg("--bin").arg(b);
    }
    if !cmd.status().context("run cargo build")?.success() {
        bail!("cargo build of {} failed", names.join(", "));
    }
    Ok(())
}

/// The variables Cargo sets for the crate it compiles or the program it runs, as opposed to
/// those that configure Cargo itself (CARGO_HOME, CARGO_TARGET_DIR, CARGO_PROFILE_*, …).
fn set_by_cargo_for_a_crate(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_build_drops_what_cargo_run_set_for_rigctl_and_keeps_what_configures_cargo() {
        for key in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_BIN_NAME",
            "OUT_DIR",
        ] {
            assert!(set_by_cargo_for_a_crate(key), "{key}");
        }
        for key in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_PROFILE_DEV_DEBUG",
            "PATH",
        ] {
            assert!(!set_by_cargo_for_a_crate(key), "{key}");
        }
    }

    #[test]
    fn lines_arrive_with_the_process_name() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut p = Spawn::new("greeter", "sh")
            .args(["-c", "echo hello; echo oops >&2"])
            .output(Output::Lines(tx))
            .spawn()
            .unwrap();
        assert!(p
            .wait_until(Instant::now() + Duration::from_secs(10))
            .unwrap()
            .is_some());
        let mut got: Vec<(String, String)> = rx.iter().take(2).collect();
        got.sort();
        assert_eq!(
            got,
            [("greeter".into(), "hello".into()), ("greeter".into(), "oops".into())]
        );
    }

    #[test]
    fn stop_kills_what_ignores_sigterm_and_drop_kills_the_group() {
        let mut p = Spawn::new("stubborn", "sh")
            .args(["-c", "trap '' TERM; sleep 30"])
            .own_process_group()
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let (_, killed) = p.stop(Duration::from_millis(200)).unwrap();
        assert!(killed);
        // Reaped: signalling it again is a no-op, not a signal to a recycled pid.
        p.signal(libc::SIGKILL);

        let p = Spawn::new("sleeper", "sleep")
            .args(["30"])
            .own_process_group()
            .on_drop(OnDrop::Kill)
            .spawn()
            .unwrap();
        let pid = p.pid() as libc::pid_t;
        drop(p);
        // SAFETY: signal 0 only asks whether the pid exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "the process outlived its drop");
    }
}
