//! The import graph of a tree: its strongly connected components (Tarjan, from
//! `petgraph`) and, for each component with a cycle, one shortest cycle (breadth-first
//! search from every member, inside the component; ties go to the alphabetically first
//! start, then to the alphabetically first neighbours, so every node finds the same one).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use petgraph::graph::{DiGraph, NodeIndex};

/// A set of modules that import each other, directly or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The component's modules, sorted.
    pub modules: Vec<String>,
    /// One shortest cycle through them, its first module repeated at the end.
    pub shortest: Vec<String>,
}

/// The cycles of a graph given as `module -> modules it imports` (self-imports ignored),
/// largest component first, then by first module.
pub fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Cycle> {
    let names: BTreeSet<&str> =
        edges.iter().flat_map(|(from, tos)| std::iter::once(from.as_str()).chain(tos.iter().map(String::as_str))).collect();
    let mut graph: DiGraph<&str, ()> = DiGraph::new();
    let index: BTreeMap<&str, NodeIndex> = names.iter().map(|&name| (name, graph.add_node(name))).collect();
    for (from, tos) in edges {
        for to in tos {
            if let (Some(&a), Some(&b)) = (index.get(from.as_str()), index.get(to.as_str()))
                && a != b
            {
                graph.update_edge(a, b, ());
            }
        }
    }
    let mut found: Vec<Cycle> = petgraph::algo::tarjan_scc(&graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| {
            let members: BTreeSet<&str> = component.iter().map(|&i| graph[i]).collect();
            Cycle {
                modules: members.iter().map(|m| (*m).to_owned()).collect(),
                shortest: shortest_cycle(edges, &members),
            }
        })
        .collect();
    found.sort_by(|a, b| b.modules.len().cmp(&a.modules.len()).then_with(|| a.modules.cmp(&b.modules)));
    found
}

/// The shortest cycle inside a strongly connected set of modules.
fn shortest_cycle(edges: &BTreeMap<String, BTreeSet<String>>, members: &BTreeSet<&str>) -> Vec<String> {
    let successors = |m: &str| -> Vec<&str> {
        edges
            .get(m)
            .map(|tos| tos.iter().map(String::as_str).filter(|t| *t != m && members.contains(t)).collect())
            .unwrap_or_default()
    };
    let mut best: Option<Vec<&str>> = None;
    for &start in members {
        // Breadth-first from `start` until an edge leads back to it.
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        let mut closing = None;
        'search: while let Some(at) = queue.pop_front() {
            for next in successors(at) {
                if next == start {
                    closing = Some(at);
                    break 'search;
                }
                if next != start && !parent.contains_key(next) {
                    parent.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
        let Some(mut at) = closing else { continue };
        let mut path = vec![start];
        while at != start {
            path.push(at);
            at = parent.get(at).copied().unwrap_or(start);
        }
        path.push(start);
        // `path` runs backwards from the closing edge: start, last, ..., first, start.
        path.reverse();
        if best.as_ref().is_none_or(|b| path.len() < b.len()) {
            best = Some(path);
        }
        if best.as_ref().is_some_and(|b| b.len() == 3) {
            break; // two modules importing each other: nothing is shorter
        }
    }
    best.unwrap_or_default().into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            map.entry((*a).into()).or_default().insert((*b).into());
        }
        map
    }

    #[test]
    fn a_three_module_cycle_is_found_with_its_shortest_path() {
        let g = graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e")]);
        let found = cycles(&g);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].modules, vec!["a", "b", "c"]);
        assert_eq!(found[0].shortest, vec!["a", "b", "c", "a"]);
    }

    #[test]
    fn the_shortest_cycle_of_a_component_is_chosen() {
        // a -> b -> c -> d -> a, and a shortcut c -> b: the shortest cycle is b -> c -> b.
        let g = graph(&[("a", "b"), ("b", "c"), ("c", "d"), ("d", "a"), ("c", "b")]);
        let found = cycles(&g);
        assert_eq!(found[0].modules, vec!["a", "b", "c", "d"]);
        assert_eq!(found[0].shortest, vec!["b", "c", "b"]);
    }

    #[test]
    fn acyclic_graphs_and_self_imports_have_no_cycles() {
        assert!(cycles(&graph(&[("a", "b"), ("b", "c"), ("a", "c"), ("c", "c")])).is_empty());
    }

    #[test]
    fn separate_components_are_reported_largest_first() {
        let g = graph(&[("x", "y"), ("y", "x"), ("a", "b"), ("b", "c"), ("c", "a")]);
        let found = cycles(&g);
        assert_eq!(found.iter().map(|c| c.modules.len()).collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!(found[1].shortest, vec!["x", "y", "x"]);
    }
}
