//! The `pyagent` binary's contract: configuration errors exit 2 naming the field,
//! `--print-config` shows the layered result, SIGINT/SIGTERM stop a node with exit 0,
//! query commands fail clearly without a node. No network beyond loopback, mDNS off.


use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PYAGENT: &str = env!("CARGO_BIN_EXE_pyagent");

fn pyagent(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(PYAGENT);
    cmd.args(args).env_remove("PYAGENT_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pyagent")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_config_exits_2_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[p2p]\nprot = 7760\n").unwrap();
    let out = pyagent(&["node", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("prot"), "{}", stderr(&out));

    let out = pyagent(&["node", "--data-dir", "/tmp/x", "--swarm", "no spaces"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("swarm:"), "{}", stderr(&out));

    let out = pyagent(&["node", "--data-dir", "/tmp/x", "--api", "0.0.0.0:7761"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("api.bind"), "{}", stderr(&out));

    // --print-config validates first: it never shows what the start would refuse.
    let out = pyagent(&["node", "--data-dir", "/tmp/x", "--api", "0.0.0.0:7761", "--print-config"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr(&out).contains("api.bind") && out.stdout.is_empty(), "{}", stderr(&out));

    let out = pyagent(&["node", "--print-config"], &[("PYAGENT_P2P_PORT", "not-a-port")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("PYAGENT_P2P_PORT"), "{}", stderr(&out));

    let out = pyagent(&["node", "--data-dir", "/tmp/x", "--agents", "tokens,astrology"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("agents:") && stderr(&out).contains("astrology"), "{}", stderr(&out));

    let out = pyagent(&["node", "--config", "/nonexistent/pyagent.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/pyagent.toml"), "{}", stderr(&out));
}

#[test]
fn print_config_shows_file_env_and_flags_layered() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "swarm = \"from-file\"\nbootstrap = [\"/ip4/10.0.0.1/tcp/7760\"]\n[p2p]\nport = 1000\n[mdns]\ninterfaces = [\"eth1\"]\n").unwrap();
    let out = pyagent(
        &["node", "--config", file.to_str().unwrap(), "--p2p-port", "3000", "--print-config"],
        &[("PYAGENT_P2P_PORT", "2000"), ("PYAGENT_MDNS", "false"), ("PYAGENT_DATA_DIR", "/srv/pyagent")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed["swarm"].as_str(), Some("from-file"));
    assert_eq!(printed["p2p"]["port"].as_integer(), Some(3000), "flag beats env beats file");
    assert_eq!(printed["mdns"]["enabled"].as_bool(), Some(false), "env beats default");
    assert_eq!(printed["mdns"]["interfaces"][0].as_str(), Some("eth1"));
    assert_eq!(printed["data_dir"].as_str(), Some("/srv/pyagent"));
    assert_eq!(printed["api"]["bind"].as_str(), Some("127.0.0.1:7761"), "default");
}

/// Starts a loopback-only node with mDNS off; returns it once it logged "node started".
fn start_node(data_dir: &std::path::Path) -> std::process::Child {
    let mut child = Command::new(PYAGENT)
        .args(["node", "--no-mdns", "--listen-ip", "127.0.0.1", "--p2p-port", "0", "--api", "127.0.0.1:0", "--events", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .env_remove("PYAGENT_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("node started") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20)).expect("node started");
    child
}

fn signal_and_wait(child: &mut std::process::Child, signal: &str) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    assert!(Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap().success());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("node ignored {signal} for 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigint_and_sigterm_stop_a_node_with_exit_0_within_3_s() {
    let dir = tempfile::tempdir().unwrap();
    for signal in ["-INT", "-TERM"] {
        let mut node = start_node(dir.path());
        let (status, took) = signal_and_wait(&mut node, signal);
        assert_eq!(status.code(), Some(0), "{signal}");
        assert!(took < Duration::from_secs(3), "{signal}: stopping took {took:?}");
    }
    // Both runs used one identity, and the lock was released each time.
    assert!(dir.path().join("identity.key").exists());
}

#[test]
fn status_without_a_node_fails_clearly() {
    let out = pyagent(&["status", "--api", "tcp://127.0.0.1:9", "--timeout-ms", "500"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is `pyagent node` running"), "{}", stderr(&out));
}

#[test]
fn bench_transport_prints_one_line_per_stack_and_refuses_bad_sizes() {
    let out = pyagent(&["bench-transport", "--mib", "2", "--runs", "1", "--stack", "raw-tcp", "--stack", "tcp", "--stack", "quic"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let stacks: Vec<&str> = lines.iter().map(|l| l["stack"].as_str().unwrap()).collect();
    assert_eq!(stacks, ["raw tcp", "tcp+noise+yamux", "quic"]);
    for line in &lines {
        assert!(line["best_gbytes_per_s"].as_f64().unwrap() > 0.0, "{line}");
    }
    assert!(lines[0]["over_raw_tcp"].is_null() && lines[1]["over_raw_tcp"].as_f64().unwrap() > 0.0);
    for bad in [["--frame-bytes", "0"], ["--mib", "0"], ["--stack", "carrier-pigeon"]] {
        let out = pyagent(&["bench-transport", bad[0], bad[1]], &[]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(stderr(&out).contains(bad[0]), "{bad:?}: {}", stderr(&out));
    }
}

#[test]
fn keygen_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("swarm.key");
    let k = key.to_str().unwrap();
    assert!(pyagent(&["keygen", "--swarm-key", k], &[]).status.success());
    let out = pyagent(&["keygen", "--swarm-key", k], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
}

#[test]
fn generate_streams_text_and_reports_rates_or_says_why_not() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("target/models/tiny");
    // Without the runtime: a clear error, exit 1.
    let out = pyagent(&["generate", "--model", model.to_str().unwrap(), "--ort-lib", "/nonexistent/libonnxruntime.so", "hi"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("inference is off") && stderr(&out).contains("prepare-model.sh"), "{}", stderr(&out));
    if !model.join("model.onnx").exists() || !root.join(".venv-models").exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must prepare the tiny model (scripts/test.sh does)");
        eprintln!("\n!!!!! SKIPPED generate CLI test: run scripts/prepare-model.sh tiny target/models/tiny !!!!!\n");
        return;
    }
    let out = pyagent(&["generate", "--model", model.to_str().unwrap(), "--max-tokens", "8", "--threads", "1", "Hello"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("8 generated: decode") && stderr(&out).contains("tokens/s"), "{}", stderr(&out));
    assert!(!out.stdout.is_empty());
    let out = pyagent(&["generate", "--model", "/nonexistent/model", "hi"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/model/model.onnx"), "{}", stderr(&out));
}

#[test]
fn systemd_hears_ready_once_the_node_serves_and_stopping_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = Command::new(PYAGENT)
        .args(["node", "--no-mdns", "--listen-ip", "127.0.0.1", "--p2p-port", "0", "--api", "127.0.0.1:0", "--events", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &path)
        .env_remove("PYAGENT_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node");
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within 20 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let (status, _) = signal_and_wait(&mut child, "-TERM");
    assert_eq!(status.code(), Some(0));
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
}

#[test]
fn the_example_config_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/config.example.toml");
    let out = pyagent(&["node", "--config", example.to_str().unwrap(), "--data-dir", "/tmp/x", "--print-config"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed["http"]["bind"].as_str(), Some("127.0.0.1:7763"));
}
