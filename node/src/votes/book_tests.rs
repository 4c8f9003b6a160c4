use super::*;
use pyagent_protocol::vote::VoteMethod;

const NOW: u64 = 1_000_000;

fn spec(method: VoteMethod, kind: ProposalKind, options: &[&str]) -> ProposalSpec {
    ProposalSpec {
        title: "lunch".into(),
        kind,
        options: options.iter().map(|o| (*o).to_owned()).collect(),
        method,
        proposer: String::new(),
        created_unix_ms: NOW,
        deadline_unix_ms: NOW + 60_000,
        quorum: Some(2),
        nonce: 1,
    }
}

fn published_ballots(fx: &Effects) -> Vec<Ballot> {
    fx.iter().filter_map(|e| if let Effect::PublishVote(VoteMessage::Ballot(b)) = e { Some(b.clone()) } else { None }).collect()
}

#[test]
fn a_proposal_is_published_and_recorded_and_ballots_counted_once() {
    let (alice, bob) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut a = VoteBook::new(alice, vec![]);
    let mut b = VoteBook::new(bob, vec![]);
    let mut fx = Effects::new();
    let id = a.propose(spec(VoteMethod::Borda, ProposalKind::General, &["pizza", "sushi", "salad"]), NOW, &mut fx).unwrap();
    let Some(Effect::PublishVote(proposal)) = fx.first().cloned() else { panic!("{fx:?}") };
    assert!(fx.iter().any(|e| matches!(e, Effect::Record { subject, event: HistoryEvent::Proposal(p) } if *subject == id && p.title == "lunch")), "{fx:?}");
    b.on_message(proposal, NOW, &mut Effects::new()).unwrap();

    fx.clear();
    a.cast(id, VoteChoice::Ranking(vec![1, 0, 2]), None, NOW + 1, &mut fx).unwrap();
    let mine = published_ballots(&fx);
    assert_eq!(mine.len(), 1);
    assert!(fx.iter().any(|e| matches!(e, Effect::Record { event: HistoryEvent::Ballot(b), .. } if **b == mine[0])), "the signed ballot, whole");
    let open = a.tally(&id, NOW + 2).unwrap();
    assert!(!open.is_final && open.ballots_counted == 1, "{open:?}");

    // Bob's node gets Alice's ballot by gossip; a replay is refused, the first stands.
    b.on_message(VoteMessage::Ballot(mine[0].clone()), NOW + 3, &mut Effects::new()).unwrap();
    assert!(b.on_message(VoteMessage::Ballot(mine[0].clone()), NOW + 3, &mut Effects::new()).is_err());
    let mut bfx = Effects::new();
    b.cast(id, VoteChoice::Ranking(vec![1, 2, 0]), None, NOW + 4, &mut bfx).unwrap();
    a.on_message(VoteMessage::Ballot(published_ballots(&bfx)[0].clone()), NOW + 5, &mut Effects::new()).unwrap();

    fx.clear();
    let (ta, tb) = (a.tally(&id, NOW + 6).unwrap(), b.tally(&id, NOW + 6).unwrap());
    assert_eq!(ta, tb, "every node computes the same tally");
    assert!(ta.is_final, "quorum of 2 met");
    assert_eq!((ta.method.as_str(), ta.winner.as_deref()), ("borda", Some("sushi")));
    assert_eq!(ta.ranking[0], "sushi");
    let alices = pyagent_protocol::api::LabelledChoice::Ranking(vec!["sushi".into(), "pizza".into(), "salad".into()]);
    assert!(ta.ballots.iter().any(|b| b.choice == alices), "ballots by label: {:?}", ta.ballots);
}

#[test]
fn late_early_and_forged_ballots() {
    let (alice, bob) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut a = VoteBook::new(alice, vec![]);
    let mut b = VoteBook::new(bob, vec![]);
    let mut fx = Effects::new();
    let id = a.propose(spec(VoteMethod::Plurality, ProposalKind::General, &["x", "y"]), NOW, &mut fx).unwrap();
    let proposal = fx[0].clone();
    let Effect::PublishVote(proposal) = proposal else { panic!() };

    // Bob votes before Alice's proposal reaches Alice's peer C: kept, counted on arrival.
    let mut c = VoteBook::new(Keypair::generate_ed25519(), vec![]);
    b.on_message(proposal.clone(), NOW, &mut Effects::new()).unwrap();
    let mut bfx = Effects::new();
    b.cast(id, VoteChoice::Ranking(vec![0]), None, NOW + 10, &mut bfx).unwrap();
    let ballot = published_ballots(&bfx)[0].clone();
    c.on_message(VoteMessage::Ballot(ballot.clone()), NOW + 11, &mut Effects::new()).unwrap();
    c.on_message(proposal, NOW + 12, &mut Effects::new()).unwrap();
    assert_eq!(c.tally(&id, NOW + 13).unwrap().ballots_counted, 1);

    // Forged: the choice changed after signing.
    let mut forged = ballot.clone();
    forged.choice = VoteChoice::Ranking(vec![1]);
    assert!(a.on_message(VoteMessage::Ballot(forged), NOW, &mut fx).unwrap_err().to_string().contains("bad signature"));
    // After the deadline: refused.
    let err = a.cast(id, VoteChoice::Ranking(vec![1]), None, NOW + 120_000, &mut fx).unwrap_err();
    assert!(err.to_string().contains("after the deadline") && err.is_bad_input(), "{err}");
    assert!(matches!(a.cast(pyagent_protocol::task::TaskId([3; 32]), VoteChoice::Ranking(vec![0]), None, NOW, &mut fx), Err(VotesError::UnknownProposal(_))));
}

#[test]
fn agents_rank_review_candidates_and_vote() {
    let mut a = VoteBook::new(Keypair::generate_ed25519(), vec!["complexity".into(), "tokens".into()]);
    let candidates = vec!["def f(x):\n    if x:\n        if x > 1:\n            return 2\n    return 1\n".to_owned(), "def f(x):\n    return 1\n".to_owned()];
    let kind = ProposalKind::Review { function: "f".into(), candidates };
    let mut fx = Effects::new();
    let id = a.propose(spec(VoteMethod::Borda, kind.clone(), &["1", "2"]), NOW, &mut fx).unwrap();
    let ballots = published_ballots(&fx);
    let agents: Vec<Option<String>> = ballots.iter().map(|b| b.agent.clone()).collect();
    assert_eq!(agents, vec![Some("complexity".into()), Some("tokens".into())]);
    assert_eq!(a.tally(&id, NOW).unwrap().winner.as_deref(), Some("2"), "the simpler candidate wins");
    // Approval ballots are for people: agents abstain.
    fx.clear();
    let mut approval = spec(VoteMethod::Approval, kind, &["1", "2"]);
    approval.nonce = 2;
    a.propose(approval, NOW, &mut fx).unwrap();
    assert!(published_ballots(&fx).is_empty());
}
