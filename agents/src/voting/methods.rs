//! The counting methods. Every function takes the ballots in voter order (as a
//! [`BallotBox`] yields them) and uses integer arithmetic only.

use std::collections::BTreeMap;

use super::ballot::{Ballot, BallotBox, Choice, Method};
use super::tiebreak;

/// The outcome of a vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Every option, winner first; ties are broken by the proposal's seeded order.
    pub ranking: Vec<usize>,
    /// Per option, in the method's unit: votes, approvals, points, weighted points,
    /// quadratic votes; for Schulze, how many options it beats by strongest paths; for
    /// instant-runoff, the votes in the last round the option took part in.
    pub scores: Vec<i64>,
    /// Instant-runoff only: the count of every round (eliminated options count 0).
    pub rounds: Vec<Vec<i64>>,
    /// Schulze only: the strongest-path matrix `p[i][j]`.
    pub strongest_paths: Vec<Vec<i64>>,
    pub ballots_counted: usize,
}

impl Tally {
    /// The winner, when at least one ballot was counted.
    pub fn winner(&self) -> Option<usize> {
        (self.ballots_counted > 0).then(|| self.ranking.first().copied()).flatten()
    }
}

/// Counts the ballots of `ballot_box`. `trust` gives voters' weights for
/// [`Method::TrustWeighted`] (voters it does not list weigh 1).
pub fn tally(ballot_box: &BallotBox, trust: &BTreeMap<String, u64>) -> Tally {
    let proposal = ballot_box.proposal();
    let n = proposal.options.len();
    let ballots: Vec<&Ballot> = ballot_box.ballots().collect();
    let seed = proposal.id.as_slice();
    let simple = |scores: Vec<i64>| Tally {
        ranking: tiebreak::rank_by_score(seed, &scores),
        scores,
        rounds: Vec::new(),
        strongest_paths: Vec::new(),
        ballots_counted: ballots.len(),
    };
    match &proposal.method {
        Method::Plurality => simple(plurality(n, &ballots)),
        Method::Approval => simple(approval(n, &ballots)),
        Method::Borda => simple(borda(n, &ballots, |_| 1)),
        Method::TrustWeighted => simple(borda(n, &ballots, |voter| trust.get(voter).copied().unwrap_or(1))),
        Method::Quadratic { .. } => simple(quadratic(n, &ballots)),
        Method::InstantRunoff => instant_runoff(n, &ballots, seed),
        Method::Schulze => schulze(n, &ballots, seed),
    }
}

fn rankings<'a>(ballots: &'a [&'a Ballot]) -> impl Iterator<Item = (&'a str, &'a [usize])> {
    ballots.iter().filter_map(|b| match &b.choice {
        Choice::Ranking(r) => Some((b.voter.as_str(), r.as_slice())),
        _ => None,
    })
}

fn plurality(n: usize, ballots: &[&Ballot]) -> Vec<i64> {
    let mut scores = vec![0; n];
    for (_, r) in rankings(ballots) {
        if let Some(&first) = r.first() {
            scores[first] += 1;
        }
    }
    scores
}

fn approval(n: usize, ballots: &[&Ballot]) -> Vec<i64> {
    let mut scores = vec![0; n];
    for b in ballots {
        if let Choice::Approval(a) = &b.choice {
            for &o in a {
                scores[o] += 1;
            }
        }
    }
    scores
}

fn borda(n: usize, ballots: &[&Ballot], weight: impl Fn(&str) -> u64) -> Vec<i64> {
    let mut scores = vec![0i64; n];
    for (voter, r) in rankings(ballots) {
        let w = i64::try_from(weight(voter)).unwrap_or(i64::MAX);
        for (position, &o) in r.iter().enumerate() {
            let points = (n - 1 - position) as i64;
            scores[o] = scores[o].saturating_add(points.saturating_mul(w));
        }
    }
    scores
}

fn quadratic(n: usize, ballots: &[&Ballot]) -> Vec<i64> {
    let mut scores = vec![0i64; n];
    for b in ballots {
        if let Choice::Quadratic(q) = &b.choice {
            for &(o, v) in q {
                scores[o] = scores[o].saturating_add(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
    }
    scores
}

fn instant_runoff(n: usize, ballots: &[&Ballot], seed: &[u8]) -> Tally {
    let mut continuing = vec![true; n];
    let mut rounds: Vec<Vec<i64>> = Vec::new();
    let mut eliminated: Vec<usize> = Vec::new();
    let mut last_count = vec![0i64; n];
    while continuing.iter().filter(|c| **c).count() > 1 {
        let mut count = vec![0i64; n];
        for (_, r) in rankings(ballots) {
            if let Some(&top) = r.iter().find(|o| continuing[**o]) {
                count[top] += 1;
            }
        }
        for o in 0..n {
            if continuing[o] {
                last_count[o] = count[o];
            }
        }
        let min = (0..n).filter(|o| continuing[*o]).map(|o| count[o]).min().unwrap_or(0);
        let mut tied: Vec<usize> = (0..n).filter(|o| continuing[*o] && count[*o] == min).collect();
        // Backwards: the latest earlier round where the tied options differ decides.
        for earlier in rounds.iter().rev() {
            if tied.len() == 1 {
                break;
            }
            let low = tied.iter().map(|o| earlier[*o]).min().unwrap_or(0);
            tied.retain(|o| earlier[*o] == low);
        }
        // Still tied: the option that ranks last in the seeded order goes.
        let out = tied.iter().copied().max_by_key(|o| tiebreak::key(seed, *o)).unwrap_or(0);
        rounds.push(count);
        continuing[out] = false;
        eliminated.push(out);
    }
    let mut ranking: Vec<usize> = (0..n).filter(|o| continuing[*o]).collect();
    ranking.extend(eliminated.iter().rev());
    if rounds.is_empty() {
        // Nothing to eliminate (cannot happen with 2+ options, kept for safety).
        rounds.push(last_count.clone());
    }
    Tally { ranking, scores: last_count, rounds, strongest_paths: Vec::new(), ballots_counted: ballots.len() }
}

fn schulze(n: usize, ballots: &[&Ballot], seed: &[u8]) -> Tally {
    // d[i][j]: voters who prefer i to j. Listed options beat unlisted ones; unlisted
    // options are tied with each other.
    let mut d = vec![vec![0i64; n]; n];
    for (_, r) in rankings(ballots) {
        let mut position = vec![usize::MAX; n];
        for (pos, &o) in r.iter().enumerate() {
            position[o] = pos;
        }
        for i in 0..n {
            for j in 0..n {
                if i != j && position[i] < position[j] {
                    d[i][j] += 1;
                }
            }
        }
    }
    // Strongest paths, winning strength.
    let mut p = vec![vec![0i64; n]; n];
    for i in 0..n {
        for j in 0..n {
            if i != j && d[i][j] > d[j][i] {
                p[i][j] = d[i][j];
            }
        }
    }
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            for k in 0..n {
                if i != k && j != k {
                    p[j][k] = p[j][k].max(p[j][i].min(p[i][k]));
                }
            }
        }
    }
    // The relation "p[i][j] > p[j][i]" is transitive (Schulze 2011), so the number of
    // options an option beats orders them consistently with it.
    let scores: Vec<i64> = (0..n).map(|i| (0..n).filter(|&j| i != j && p[i][j] > p[j][i]).count() as i64).collect();
    Tally {
        ranking: tiebreak::rank_by_score(seed, &scores),
        scores,
        rounds: Vec::new(),
        strongest_paths: p,
        ballots_counted: ballots.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voting::{Proposal, tiebreak};

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| ((b'A' + i as u8) as char).to_string()).collect()
    }

    /// Ballots from "count × ranking" groups, rankings written as letters ("ACBED").
    fn box_of(method: Method, n: usize, groups: &[(usize, &str)]) -> BallotBox {
        let mut bb = BallotBox::new(Proposal::new("proposal-1", names(n), method).unwrap());
        let mut voter = 0;
        for (count, order) in groups {
            for _ in 0..*count {
                let ranking = order.bytes().map(|c| (c - b'A') as usize).collect();
                bb.cast(Ballot { voter: format!("voter-{voter:03}"), choice: Choice::Ranking(ranking) }).unwrap();
                voter += 1;
            }
        }
        bb
    }

    fn letters(ranking: &[usize]) -> String {
        ranking.iter().map(|&o| (b'A' + o as u8) as char).collect()
    }

    fn no_trust() -> BTreeMap<String, u64> {
        BTreeMap::new()
    }

    /// Schulze's classic example (45 voters, 5 options): E > A > C > B > D.
    #[test]
    fn schulze_45_voter_example() {
        let groups = [(5, "ACBED"), (5, "ADECB"), (8, "BEDAC"), (3, "CABED"), (7, "CAEBD"), (2, "CBADE"), (7, "DCEBA"), (8, "EBADC")];
        let t = tally(&box_of(Method::Schulze, 5, &groups), &no_trust());
        assert_eq!(letters(&t.ranking), "EACBD");
        assert_eq!(t.winner(), Some(4));
        // Strongest paths from the worked example: p[E][A] = 25 > p[A][E] = 24.
        assert_eq!((t.strongest_paths[4][0], t.strongest_paths[0][4]), (25, 24));
        assert_eq!(t.ballots_counted, 45);
    }

    #[test]
    fn plurality_counts_first_choices() {
        let t = tally(&box_of(Method::Plurality, 3, &[(4, "ABC"), (3, "BCA"), (2, "CBA")]), &no_trust());
        assert_eq!(t.scores, vec![4, 3, 2]);
        assert_eq!(t.winner(), Some(0));
    }

    #[test]
    fn borda_gives_n_minus_1_minus_position_and_nothing_to_unranked() {
        // A: 2+0+... ; rankings may be partial.
        let t = tally(&box_of(Method::Borda, 3, &[(2, "ABC"), (1, "BA"), (1, "C")]), &no_trust());
        // A: 2*2 + 1 = 5; B: 2*1 + 2 = 4; C: 0 + 0 + 2 = 2.
        assert_eq!(t.scores, vec![5, 4, 2]);
        assert_eq!(letters(&t.ranking), "ABC");
    }

    #[test]
    fn approval_counts_every_approved_option() {
        let mut bb = BallotBox::new(Proposal::new("p", names(3), Method::Approval).unwrap());
        for (v, a) in [("x", vec![0, 1]), ("y", vec![1]), ("z", vec![1, 2])] {
            bb.cast(Ballot { voter: v.into(), choice: Choice::Approval(a) }).unwrap();
        }
        let t = tally(&bb, &no_trust());
        assert_eq!(t.scores, vec![1, 3, 1]);
        assert_eq!(t.winner(), Some(1));
    }

    #[test]
    fn quadratic_sums_votes_not_credits() {
        let mut bb = BallotBox::new(Proposal::new("p", names(2), Method::Quadratic { credits: 9 }).unwrap());
        // One voter all-in on A (3 votes for 9 credits) loses to two moderate voters on B.
        bb.cast(Ballot { voter: "whale".into(), choice: Choice::Quadratic(vec![(0, 3)]) }).unwrap();
        bb.cast(Ballot { voter: "x".into(), choice: Choice::Quadratic(vec![(1, 2)]) }).unwrap();
        bb.cast(Ballot { voter: "y".into(), choice: Choice::Quadratic(vec![(1, 2)]) }).unwrap();
        let t = tally(&bb, &no_trust());
        assert_eq!(t.scores, vec![3, 4]);
        assert_eq!(t.winner(), Some(1));
    }

    #[test]
    fn trust_weighted_borda_multiplies_by_trust() {
        let bb = box_of(Method::TrustWeighted, 2, &[(1, "AB"), (2, "BA")]);
        // Unweighted, B wins 2:1. voter-000 (A first) has trust 5.
        let trust: BTreeMap<String, u64> = [("voter-000".to_string(), 5)].into();
        let t = tally(&bb, &trust);
        assert_eq!(t.scores, vec![5, 2]);
        assert_eq!(t.winner(), Some(0));
        assert_eq!(tally(&bb, &no_trust()).winner(), Some(1));
    }

    #[test]
    fn instant_runoff_transfers_votes() {
        // First choices A 4, B 3, C 2: C is eliminated, its votes go to B, B wins 5:4.
        let t = tally(&box_of(Method::InstantRunoff, 3, &[(4, "ABC"), (3, "BCA"), (2, "CBA")]), &no_trust());
        assert_eq!(t.rounds, vec![vec![4, 3, 2], vec![4, 5, 0]]);
        assert_eq!(letters(&t.ranking), "BAC");
    }

    #[test]
    fn instant_runoff_tie_broken_backwards() {
        // Round 1: A 4, B 3, C 2, D 1: D goes, its vote moves to C. Round 2: A 4, B 3, C 3:
        // B and C tie; in round 1 C had fewer (2 < 3), so C goes, not B.
        let groups = [(4, "ABC"), (3, "BAC"), (2, "CBA"), (1, "DCB")];
        let t = tally(&box_of(Method::InstantRunoff, 4, &groups), &no_trust());
        assert_eq!(t.rounds[0], vec![4, 3, 2, 1]);
        assert_eq!(t.rounds[1], vec![4, 3, 3, 0]);
        // C eliminated second: its 3 votes go to B, who then beats A 6:4.
        assert_eq!(t.rounds[2], vec![4, 6, 0, 0]);
        assert_eq!(letters(&t.ranking), "BACD");
    }

    #[test]
    fn instant_runoff_full_tie_uses_the_seeded_order_identically_everywhere() {
        // A perfect cycle: every round is a full tie, only the seed can decide.
        let groups = [(1, "ABC"), (1, "BCA"), (1, "CAB")];
        let winners: std::collections::BTreeSet<usize> = (0..32u8)
            .map(|s| {
                let mut bb = BallotBox::new(Proposal::new(vec![s], names(3), Method::InstantRunoff).unwrap());
                for (v, (_, order)) in groups.iter().enumerate() {
                    let ranking = order.bytes().map(|c| (c - b'A') as usize).collect();
                    bb.cast(Ballot { voter: format!("v{v}"), choice: Choice::Ranking(ranking) }).unwrap();
                }
                let t = tally(&bb, &no_trust());
                // The first elimination is the tied option that ranks last in the seeded order.
                let expected_out = (0..3).max_by_key(|o| tiebreak::key(&[s], *o)).unwrap();
                assert_eq!(*t.ranking.last().unwrap(), expected_out, "seed {s}");
                t.winner().unwrap()
            })
            .collect();
        assert!(winners.len() > 1, "different proposals break the tie differently");
    }

    #[test]
    fn arrival_order_does_not_change_the_tally() {
        let groups = [(5, "ACBED"), (5, "ADECB"), (8, "BEDAC"), (3, "CABED"), (7, "CAEBD"), (2, "CBADE"), (7, "DCEBA"), (8, "EBADC")];
        for method in [Method::Schulze, Method::InstantRunoff, Method::Borda, Method::Plurality] {
            let forward = box_of(method.clone(), 5, &groups);
            let mut ballots: Vec<Ballot> = forward.ballots().cloned().collect();
            ballots.reverse();
            ballots.rotate_left(17);
            let mut shuffled = BallotBox::new(forward.proposal().clone());
            for b in ballots {
                shuffled.cast(b).unwrap();
            }
            assert_eq!(tally(&forward, &no_trust()), tally(&shuffled, &no_trust()), "{method:?}");
        }
    }

    #[test]
    fn no_ballots_no_winner() {
        let bb = BallotBox::new(Proposal::new("p", names(3), Method::Schulze).unwrap());
        let t = tally(&bb, &no_trust());
        assert_eq!(t.winner(), None);
        assert_eq!(t.ranking.len(), 3);
    }
}
