//! How agents vote on a `review` proposal: candidate rewrites of one Python function, each
//! agent ranking them by its own criterion, best first.
//!
//! - `complexity`: lower total cyclomatic complexity first (radon's rules);
//! - `tokens`: fewer `cl100k_base` tokens first;
//! - `imports`: no new import cycles first — judged by what each candidate imports: a
//!   candidate that imports nothing cannot add a cycle, and among the others, fewer
//!   distinct imported modules first (a single function carries no tree to find cycles
//!   in; the proposal's text is all an agent sees).
//!
//! A candidate that does not parse, or that changes the function's signature (its name,
//! parameters or return annotation: callers would break), ranks last. Ties keep the
//! candidates' order. Pure functions: every node's agent of the same kind casts the same
//! ranking.

use crate::python::{ParsedModule, with_deep_stack};

/// Orders candidates by a score (lower first); `None` scores (unparsable) go last.
fn order_by(scores: Vec<Option<u64>>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by_key(|&i| (scores[i].is_none(), scores[i].unwrap_or(u64::MAX), i));
    order
}

/// Total cyclomatic complexity of a candidate's functions, methods and classes.
fn complexity_score(text: &str) -> Option<u64> {
    let blocks = crate::complexity::analyze(text).ok()?;
    let functions: u64 = blocks.functions.iter().map(|f| u64::from(f.complexity)).sum();
    let classes: u64 = blocks.classes.iter().map(|c| u64::from(c.real_complexity)).sum();
    Some(functions + classes)
}

fn imports_score(text: &str) -> Option<u64> {
    with_deep_stack(|| {
        let parsed = ParsedModule::parse(text).ok()?;
        let modules: std::collections::BTreeSet<String> = crate::imports::extract::imports(&parsed)
            .into_iter()
            .map(|i| match i {
                crate::imports::extract::RawImport::Import { module, .. } => module,
                crate::imports::extract::RawImport::From { level, module, .. } => format!("{}{module}", ".".repeat(level as usize)),
            })
            .collect();
        Some(modules.len() as u64)
    })
}

/// The ranking agent `agent` gives the candidate rewrites of `function`, or `None` if it
/// does not review.
pub fn rank(agent: &str, function: &str, candidates: &[String]) -> Option<Vec<usize>> {
    let mut scores: Vec<Option<u64>> = match agent {
        "complexity" => candidates.iter().map(|c| complexity_score(c)).collect(),
        "tokens" => {
            let counter = crate::tokens::TokensAgent::new();
            candidates
                .iter()
                .map(|c| ParsedModule::parse(c).ok().map(|_| counter.count(c).cl100k_base))
                .collect()
        }
        "imports" => candidates.iter().map(|c| imports_score(c)).collect(),
        _ => return None,
    };
    // Given the original's source, a candidate with another signature goes last; given
    // its name, one that defines another function.
    let wanted = crate::functions::signature(function);
    let name = function.trim();
    let is_name = !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    for (score, candidate) in scores.iter_mut().zip(candidates) {
        let theirs = crate::functions::signature(candidate);
        let keeps = match (&wanted, &theirs) {
            (Some(w), Some(t)) => w == t,
            (None, Some(t)) if is_name => t.split('(').next() == Some(name),
            (None, _) => true,
            (Some(_), None) => false,
        };
        if !keeps {
            *score = None;
        }
    }
    Some(order_by(scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates() -> Vec<String> {
        vec![
            // 0: branchy, long, imports two modules
            "import os, sys\ndef f(x):\n    if x:\n        return os.sep\n    elif x is None:\n        return sys.platform\n    return [y for y in x if y]\n".into(),
            // 1: simple and short, no imports
            "def f(x):\n    return x or 0\n".into(),
            // 2: does not parse
            "def f(x) return x\n".into(),
            // 3: medium, imports one module
            "from math import floor\ndef f(x):\n    return floor(x) if x else 0\n".into(),
        ]
    }

    #[test]
    fn each_agent_ranks_by_its_criterion() {
        let original = "def f(x):\n    return x\n";
        assert_eq!(rank("complexity", original, &candidates()), Some(vec![1, 3, 0, 2]));
        assert_eq!(rank("tokens", original, &candidates()), Some(vec![1, 3, 0, 2]));
        assert_eq!(rank("imports", original, &candidates()), Some(vec![1, 3, 0, 2]));
        assert_eq!(rank("astrology", original, &candidates()), None);
    }

    #[test]
    fn a_candidate_that_changes_the_signature_ranks_last() {
        let original = "def f(x):\n    if x:\n        return 1\n    return 0\n";
        let renamed = "def g(x):\n    return int(bool(x))\n".to_string();
        let more_params = "def f(x, y):\n    return int(bool(x))\n".to_string();
        let same = "def f(x):\n    return int(bool(x))\n".to_string();
        let branchy = original.to_string();
        for agent in ["complexity", "tokens", "imports"] {
            let order = rank(agent, original, &[renamed.clone(), more_params.clone(), branchy.clone(), same.clone()]).unwrap();
            assert_eq!(&order[2..], &[0, 1], "{agent}: signature changes go last: {order:?}");
        }
        // Given only the name, a renamed candidate goes last; nothing to compare, nothing demoted.
        assert_eq!(rank("complexity", "f", &[renamed.clone(), same.clone()]), Some(vec![1, 0]));
        assert_eq!(rank("complexity", "", &[renamed.clone(), same.clone()]), Some(vec![0, 1]));
    }

    #[test]
    fn ties_keep_the_candidates_order() {
        let same = vec!["def f(): pass\n".to_string(), "def f(): pass\n".to_string()];
        assert_eq!(rank("complexity", "def f(): pass\n", &same), Some(vec![0, 1]));
    }
}
