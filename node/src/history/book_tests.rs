//! The history book with an injected clock and a fake network: appends count owners'
//! acknowledgements, fall back to hints, and hints are delivered once owners answer.

use super::*;
use crate::history::entry;
use libp2p::identity::Keypair;
use pyagent_protocol::history::HistoryEvent;
use pyagent_protocol::task::TaskId;

struct Fixture {
    _dir: tempfile::TempDir,
    book: HistoryBook,
    keypair: Keypair,
    peers: Vec<PeerId>,
    now: Instant,
}

fn fixture(peers: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let keypair = Keypair::generate_ed25519();
    let me = keypair.public().to_peer_id();
    let now = Instant::now();
    let mut book = HistoryBook::new(me, HistorySettings::default(), store, now);
    let peers: Vec<PeerId> = (0..peers).map(|_| PeerId::random()).collect();
    book.set_members(peers.clone(), now);
    Fixture { _dir: dir, book, keypair, peers, now }
}

fn entries(kp: &Keypair, n: u8) -> Vec<(Entry, EntryKey)> {
    (0..n).map(|i| entry::sign(kp, TaskId([i; 32]), HistoryEvent::Inference { model: "m".into(), detail: format!("{i}") }, 1).unwrap()).collect()
}

/// Carries out writes against the real store (as the writer would) and answers every
/// Send with `answer(peer)`; returns the peers that were asked to store.
fn run(f: &mut Fixture, mut out: Vec<Out>, answer: &dyn Fn(&PeerId) -> Option<HistoryResponse>) -> Vec<PeerId> {
    let mut asked = Vec::new();
    while let Some(o) = out.pop() {
        let mut more = Vec::new();
        match o {
            Out::Write { token, entries, hints, .. } => {
                let encoded: Vec<_> = entries.iter().map(|e| crate::store::history::EncodedEntry::new(e, e.key().unwrap()).unwrap()).collect();
                let result = if hints { f.book.store.add_hints(&encoded).map(|()| encoded.len()) } else { f.book.store.insert_entries(&encoded, false) };
                f.book.on_written(token, result.map_err(|e| e.to_string()), f.now, &mut more);
            }
            Out::Send { token, peer, request: HistoryRequest::Store(_) } => {
                asked.push(peer);
                if let Some(response) = answer(&peer) {
                    f.book.on_response(token, Ok(response), f.now, &mut more);
                }
            }
            Out::Send { .. } | Out::Respond { .. } => {}
        }
        out.extend(more);
    }
    asked
}

#[test]
fn an_append_is_acknowledged_once_w_owners_hold_it() {
    let mut f = fixture(4);
    let (tx, mut rx) = oneshot::channel();
    let mut out = Vec::new();
    let batch = entries(&f.keypair, 20);
    f.book.append(batch, Some(tx), false, f.now, &mut out);
    // Every remote owner answers.
    run(&mut f, out, &|_| Some(HistoryResponse::Stored { new: 1 }));
    let report = rx.try_recv().expect("answered at once");
    assert_eq!((report.acknowledged, report.hinted, report.write_quorum), (20, 0, 2));
    assert!(report.entries.iter().all(|(_, _, copies)| *copies >= 2));
    assert_eq!(f.book.store.hint_count().unwrap(), 0);
}

#[test]
fn owners_that_do_not_answer_turn_entries_into_hints_delivered_later() {
    let mut f = fixture(4);
    let (tx, mut rx) = oneshot::channel();
    let mut out = Vec::new();
    f.book.append(entries(&f.keypair, 20), Some(tx), false, f.now, &mut out);
    // Nobody answers: only this node's own copies count.
    let asked = run(&mut f, out, &|_| None);
    assert!(!asked.is_empty());
    assert!(rx.try_recv().is_err(), "no answer before the timeout");
    f.now += WRITE_TIMEOUT;
    let mut out = Vec::new();
    f.book.tick(f.now, &mut out);
    run(&mut f, out, &|_| None);
    let report = rx.try_recv().expect("answered at the timeout");
    assert_eq!(report.acknowledged + report.hinted, 20);
    assert!(report.hinted > 0, "{report:?}");
    assert_eq!(f.book.store.hint_count().unwrap(), report.hinted);

    // The owners come back: the next hint round delivers, and the hints go.
    f.now += Duration::from_secs(2);
    let mut out = Vec::new();
    f.book.tick(f.now, &mut out);
    let asked = run(&mut f, out, &|_| Some(HistoryResponse::Stored { new: 1 }));
    assert!(!asked.is_empty());
    assert_eq!(f.book.store.hint_count().unwrap(), 0);
    let _ = f.peers;
}

#[test]
fn a_refused_store_counts_as_no_copy() {
    let mut f = fixture(2);
    let (tx, mut rx) = oneshot::channel();
    let mut out = Vec::new();
    // Three members, R = 3: every owner is needed; one refuses, the other stores.
    let refuser = f.peers[0];
    f.book.append(entries(&f.keypair, 5), Some(tx), false, f.now, &mut out);
    run(&mut f, out, &|p| Some(if *p == refuser { HistoryResponse::Error("busy".into()) } else { HistoryResponse::Stored { new: 5 } }));
    let report = rx.try_recv().expect("all owners answered");
    assert_eq!(report.acknowledged, 5, "this node and the other owner: W = 2");
    assert!(report.entries.iter().all(|(_, _, copies)| *copies == 2));
}

#[test]
fn a_repair_does_not_resend_what_an_append_is_still_delivering() {
    use pyagent_protocol::history::{KeyRange, RangeClaim, RangeItem};
    let mut f = fixture(2);
    let (slow, done) = (f.peers[0], f.peers[1]);
    let mut out = Vec::new();
    let batch = entries(&f.keypair, 1);
    let entry = batch[0].0.clone();
    f.book.append(batch, None, false, f.now, &mut out);
    // One owner stores at once; the other's answer is still on its way.
    run(&mut f, out, &|p| (*p == done).then_some(HistoryResponse::Stored { new: 1 }));
    let pull = |f: &mut Fixture, peer: PeerId| -> Vec<Entry> {
        let ranges = vec![RangeItem { range: KeyRange::FULL, claim: RangeClaim::Tags(vec![]) }];
        let mut out = Vec::new();
        f.book.on_request(peer, 1, HistoryRequest::Reconcile { shard: entry.shard(), salt: 3, pull: true, ranges }, &mut out);
        match out.pop() {
            Some(Out::Respond { response: HistoryResponse::Reconcile { entries, .. }, .. }) => entries,
            _ => panic!("no reconciliation answer"),
        }
    };
    assert!(pull(&mut f, slow).is_empty(), "the entry is on its way to this owner");
    assert_eq!(pull(&mut f, done), vec![entry.clone()], "nothing is on its way to that one");
    // A store whose answer never comes holds the repair back for a while only.
    f.now += super::super::sync::IN_FLIGHT_FOR;
    let mut out = Vec::new();
    f.book.tick(f.now, &mut out);
    assert_eq!(pull(&mut f, slow), vec![entry], "forgotten after IN_FLIGHT_FOR");
}
