//! The history DHT under faults, in the network-namespace lab (5 real `pyagent node`
//! processes, mDNS): a checker records every acknowledged write (an entry that reached
//! W = 2 owners) while nodes are killed with SIGKILL, paused with SIGSTOP, isolated, and
//! split 2|3 with both sides writing; after the heal every acknowledged entry is read
//! back through every side, and every shard's owners hold equal digests within 10 s.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::lab::{Lab, wait_for};

const READY: Duration = Duration::from_secs(20);

/// Quick membership (the failure detector) and anti-entropy, so the run stays short.
const CONFIG: &str = "[membership]\nadvert_interval_ms = 500\npeer_ttl_ms = 2500\n\n[history]\nsync_interval_ms = 1000\n";

struct Checker {
    /// Acknowledged entry id → its subject.
    acked: BTreeMap<String, String>,
    /// Entries written but short of W (hints): they must not be lost either.
    hinted: BTreeMap<String, String>,
    attempts: usize,
    failed_calls: usize,
    next: u64,
}

impl Checker {
    fn subject(phase: &str, n: u64) -> String {
        let h = blake3::hash(format!("{phase}/{}", n % 8).as_bytes());
        h.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Appends 40 entries through machine `i`; records what was acknowledged.
    fn write(&mut self, lab: &Lab, i: usize, phase: &str) {
        let entries: Vec<Value> = (0..40)
            .map(|_| {
                self.next += 1;
                json!({ "subject": Self::subject(phase, self.next), "model": "lab", "detail": format!("{phase} #{}", self.next) })
            })
            .collect();
        let subjects: Vec<String> = entries.iter().map(|e| e["subject"].as_str().unwrap_or_default().to_owned()).collect();
        let request = json!({ "id": 1, "method": "history.append", "params": { "entries": entries } }).to_string();
        self.attempts += 1;
        let out = lab.pyagent(i, &["call", "--timeout-ms", "8000", &request]);
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let Some(appended) = reply["result"]["entries"].as_array() else {
            // A paused or cut-off node may not answer: nothing was acknowledged.
            self.failed_calls += 1;
            return;
        };
        for (e, subject) in appended.iter().zip(subjects) {
            let id = e["id"].as_str().unwrap_or_default().to_owned();
            if e["copies"].as_u64().unwrap_or(0) >= 2 {
                self.acked.insert(id, subject);
            } else {
                self.hinted.insert(id, subject);
            }
        }
    }

    fn write_for(&mut self, lab: &Lab, through: &[usize], phase: &str, rounds: usize) {
        for r in 0..rounds {
            self.write(lab, through[r % through.len()], phase);
        }
    }
}

fn shards(lab: &Lab, i: usize) -> Option<Value> {
    let out = lab.pyagent(i, &["shards", "--json", "--timeout-ms", "5000"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// Whether every shard's owners (as each owner sees them) hold equal digests, all five
/// nodes agreeing on the membership, with no hint left to deliver and no former owner
/// holding entries the owners lack.
fn digests_equal(lab: &Lab) -> bool {
    let mut by_shard: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 1024];
    if std::env::var_os("LAB_HISTORY_DEBUG").is_some() {
        let states: Vec<String> = (1..=5)
            .map(|i| shards(lab, i).map_or("-".into(), |s| format!("m{} h{} o{} d{}", s["members"], s["hints_pending"], s["handoff_pending"], s["differing"].as_array().map_or(0, |d| d.len()))))
            .collect();
        eprintln!("{states:?}");
    }
    for i in 1..=5 {
        let Some(s) = shards(lab, i) else { return false };
        if s["members"] != 5 || s["hints_pending"] != 0 || s["handoff_pending"] != 0 {
            return false;
        }
        for shard in s["shards"].as_array().into_iter().flatten() {
            if shard["owned_here"] == true {
                let n = shard["shard"].as_u64().unwrap_or(0) as usize;
                by_shard[n].insert(shard["digest"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    by_shard.iter().all(|d| d.len() == 1)
}

fn read_ids(lab: &Lab, i: usize, subject: &str) -> Option<BTreeSet<String>> {
    let out = lab.pyagent(i, &["history", subject, "--json", "--timeout-ms", "8000"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["entries"].as_array()?.iter().filter_map(|e| e["id"].as_str().map(String::from)).collect())
}

#[test]
fn lab_history_loses_no_acknowledged_entry_under_kills_pauses_and_partitions() {
    let _serial = crate::lab::SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = Lab::up("hist", 5) else { return };
    let config = lab.dir.path().join("pyagent.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let args = ["--config", config.as_str()];
    let mut nodes: Vec<_> = (1..=5).map(|i| lab.spawn_node(i, &args)).collect();
    for i in 1..=5 {
        lab.wait_ready(i, READY);
    }
    wait_for("every node's history sees 5 members", Duration::from_secs(30), || (1..=5).all(|i| shards(&lab, i).is_some_and(|s| s["members"] == 5)));
    let mut c = Checker { acked: BTreeMap::new(), hinted: BTreeMap::new(), attempts: 0, failed_calls: 0, next: 0 };
    c.write_for(&lab, &[1, 2, 3, 4, 5], "steady", 5);

    // kill -9 of 2 of 5 while the rest write; then they restart on their data.
    nodes[3].kill9();
    nodes[4].kill9();
    c.write_for(&lab, &[1, 2, 3], "killed", 6);
    nodes[3] = lab.spawn_node(4, &args);
    nodes[4] = lab.spawn_node(5, &args);
    lab.wait_ready(4, READY);
    lab.wait_ready(5, READY);
    c.write_for(&lab, &[4, 5, 1], "restarted", 3);

    // SIGSTOP an owner of everything it holds; the others write; SIGCONT.
    nodes[1].signal("STOP");
    c.write_for(&lab, &[1, 3, 4, 5], "paused", 6);
    nodes[1].signal("CONT");

    // Isolate one node; it and the others keep writing.
    lab.cut(3, &[1, 2, 4, 5]);
    c.write_for(&lab, &[3, 1, 2, 4, 5], "isolated", 6);
    std::thread::sleep(Duration::from_secs(3)); // past the failure detector: views shrink
    c.write_for(&lab, &[3, 1, 5], "isolated-late", 3);
    lab.heal();

    // Split {1,2} | {3,4,5}, both sides writing, then heal.
    for i in [1, 2] {
        lab.cut(i, &[3, 4, 5]);
    }
    c.write_for(&lab, &[1, 3, 2, 4, 5], "split", 6);
    std::thread::sleep(Duration::from_secs(3));
    c.write_for(&lab, &[1, 3, 2, 4], "split-late", 4);
    lab.heal();
    let healed = Instant::now();

    wait_for("all digests equal after the heal", Duration::from_secs(30), || digests_equal(&lab));
    let converged = healed.elapsed();
    eprintln!(
        "history faults: {} appends ({} unanswered), {} entries acknowledged, {} hinted; digests equal {:.1} s after the heal",
        c.attempts,
        c.failed_calls,
        c.acked.len(),
        c.hinted.len(),
        converged.as_secs_f64()
    );
    assert!(c.acked.len() >= 1000, "the faults left too few acknowledged writes to judge: {}", c.acked.len());
    assert!(converged <= Duration::from_secs(10), "digests equal only {converged:?} after the heal");

    // Read everything back through a node of each former side.
    let mut by_subject: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (id, subject) in c.acked.iter().chain(&c.hinted) {
        by_subject.entry(subject.as_str()).or_default().insert(id.as_str());
    }
    let mut lost = Vec::new();
    for i in [1, 4] {
        for (subject, ids) in &by_subject {
            let seen = read_ids(&lab, i, subject).unwrap_or_else(|| panic!("node {i} did not answer history {subject}"));
            lost.extend(ids.iter().filter(|id| !seen.contains(**id)).map(|id| (i, id.to_string())));
        }
    }
    assert!(lost.is_empty(), "{} written entries not read back: {:?}", lost.len(), &lost[..lost.len().min(10)]);
}
