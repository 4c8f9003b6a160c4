//! Driving the network-namespace lab (`scripts/lab.sh`) and real `pyagent` processes in
//! it. mDNS only ever runs inside these namespaces.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The `pyagent` binary built by cargo for these tests.
pub const PYAGENT: &str = env!("CARGO_BIN_EXE_pyagent");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// A lab of network namespaces, removed on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    pub dir: tempfile::TempDir,
}

fn lab_cmd(prefix: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/lab.sh")).env("LAB_PREFIX", prefix);
    cmd
}

impl Lab {
    /// Creates `n` machines. Returns `None` (after saying so loudly) where the lab cannot
    /// exist — not root, or no `ip` — except in CI, where that is a failure.
    pub fn up(tag: &str, n: usize) -> Option<Lab> {
        let can = is_root() && Command::new("ip").arg("netns").arg("list").output().is_ok_and(|o| o.status.success());
        if !can {
            if std::env::var_os("CI").is_some() {
                panic!("CI must run the lab tests: they need root and iproute2 ('ip netns')");
            }
            eprintln!("\n!!!!! SKIPPED lab test '{tag}': network namespaces need root and iproute2 (CI runs them) !!!!!\n");
            return None;
        }
        let prefix = format!("pyt{}{tag}", std::process::id() % 100_000);
        let out = lab_cmd(&prefix).arg("up").arg(n.to_string()).output().expect("run lab.sh");
        assert!(out.status.success(), "lab.sh up failed: {}", String::from_utf8_lossy(&out.stderr));
        Some(Lab { prefix, dir: tempfile::tempdir().expect("tempdir") })
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// Runs `pyagent ARGS` inside machine `i` and returns its output.
    pub fn pyagent(&self, i: usize, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.ns(i), PYAGENT]).args(args).output().expect("run pyagent in the lab")
    }

    /// Starts `pyagent node` in machine `i` with its own data dir and log file.
    pub fn spawn_node(&self, i: usize, extra: &[&str]) -> LabNode {
        let data_dir = self.dir.path().join(format!("node{i}"));
        let log = self.dir.path().join(format!("node{i}.log"));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), PYAGENT, "node", "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .env("RUST_LOG", "info,pyagent_node=debug")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn pyagent node");
        LabNode { child: Some(child), log }
    }

    /// Starts `pyagent ARGS` in machine `i` in the background, stdout and stderr piped.
    pub fn spawn_pyagent(&self, i: usize, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(i), PYAGENT])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pyagent")
    }

    /// Partitions machine `i` from machines `others` (both ways; `lab.sh cut`).
    pub fn cut(&self, i: usize, others: &[usize]) {
        let mut cmd = lab_cmd(&self.prefix);
        cmd.arg("cut").arg(i.to_string()).args(others.iter().map(ToString::to_string));
        let out = cmd.output().expect("run lab.sh cut");
        assert!(out.status.success(), "lab.sh cut: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Removes every cut (`lab.sh heal`).
    pub fn heal(&self) {
        let out = lab_cmd(&self.prefix).arg("heal").output().expect("run lab.sh heal");
        assert!(out.status.success(), "lab.sh heal: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `pyagent status --json` in machine `i`, once it answers.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let out = self.pyagent(i, &["status", "--json", "--timeout-ms", "1500"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// PeerIds in machine `i`'s view (empty if its node does not answer).
    pub fn view(&self, i: usize) -> std::collections::BTreeSet<String> {
        let out = self.pyagent(i, &["peers", "--json", "--timeout-ms", "1500"]);
        if !out.status.success() {
            return Default::default();
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["peers"].as_array().map(|a| a.iter().filter_map(|p| p["peer_id"].as_str().map(String::from)).collect()).unwrap_or_default()
    }

    /// Waits until machine `i`'s node answers `status`; returns its PeerId.
    pub fn wait_ready(&self, i: usize, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.status(i) {
                return s["peer_id"].as_str().expect("peer_id").to_owned();
            }
            assert!(std::time::Instant::now() < deadline, "node {i} did not answer status within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab_cmd(&self.prefix).arg("down").output();
    }
}

/// A `pyagent node` process in the lab, killed on drop.
#[derive(Debug)]
pub struct LabNode {
    child: Option<Child>,
    pub log: PathBuf,
}

impl LabNode {
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the node process.
    pub fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill -{sig}");
    }

    /// SIGTERM, then wait; returns the exit status and how long the exit took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = std::time::Instant::now();
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        let exit = child.wait().expect("wait");
        (exit, started.elapsed())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what its nodes logged.
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("----- last lines of {} -----", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Polls `check` every 200 ms until it holds; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
