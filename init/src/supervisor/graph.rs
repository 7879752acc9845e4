//! The `after` graph: which services wait for which, and the start order
//! (manifest order, each after what it waits for). Unknown names and cycles
//! are reported and dropped, never allowed to stop the boot.

use berth_hostapi::config::Service;

/// The order to start services in and, per service, the indices it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// Service indices in start order (stop order is the reverse).
    pub order: Vec<usize>,
    /// For each service, the services it starts after.
    pub deps: Vec<Vec<usize>>,
    /// Problems found (unknown names, cycles), for the console.
    pub warnings: Vec<String>,
}

/// Builds the graph (Kahn's algorithm, ties broken by manifest order).
pub fn build(services: &[Service]) -> Graph {
    let mut warnings = Vec::new();
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(services.len());
    for svc in services {
        let mut mine = Vec::new();
        for name in &svc.after {
            match services.iter().position(|s| &s.name == name) {
                Some(i) if services.get(i).is_some_and(|s| s.name != svc.name) => {
                    if !mine.contains(&i) {
                        mine.push(i)
                    }
                }
                Some(_) => {
                    warnings.push(format!("{}: ignoring after = {name:?} (itself)", svc.name))
                }
                None => warnings.push(format!(
                    "{}: ignoring after = {name:?}: no such service",
                    svc.name
                )),
            }
        }
        deps.push(mine);
    }
    let mut order = Vec::with_capacity(services.len());
    let mut placed = vec![false; services.len()];
    loop {
        let next = (0..services.len()).find(|&i| {
            !placed.get(i).copied().unwrap_or(true)
                && deps
                    .get(i)
                    .is_some_and(|d| d.iter().all(|&j| placed.get(j).copied().unwrap_or(true)))
        });
        match next {
            Some(i) => {
                if let Some(p) = placed.get_mut(i) {
                    *p = true;
                }
                order.push(i);
            }
            None => break,
        }
    }
    // What is left waits in a cycle: drop its unplaced dependencies.
    for i in 0..services.len() {
        if placed.get(i).copied().unwrap_or(true) {
            continue;
        }
        let name = services.get(i).map(|s| s.name.as_str()).unwrap_or("?");
        warnings.push(format!(
            "{name}: `after` forms a cycle; starting it without waiting"
        ));
        if let Some(d) = deps.get_mut(i) {
            d.retain(|&j| placed.get(j).copied().unwrap_or(false));
        }
        if let Some(p) = placed.get_mut(i) {
            *p = true;
        }
        order.push(i);
    }
    Graph {
        order,
        deps,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, after: &[&str]) -> Service {
        Service {
            name: name.into(),
            after: after.iter().map(|s| s.to_string()).collect(),
            ..Service::default()
        }
    }

    #[test]
    fn order_follows_after() {
        let g = build(&[
            svc("web", &["db", "net"]),
            svc("db", &["net"]),
            svc("net", &[]),
        ]);
        assert_eq!(g.order, [2, 1, 0]);
        assert_eq!(g.deps, [vec![1, 2], vec![2], vec![]]);
        assert!(g.warnings.is_empty());
    }

    #[test]
    fn unknown_names_and_cycles_are_dropped() {
        let g = build(&[svc("a", &["b"]), svc("b", &["a"]), svc("c", &["zz", "c"])]);
        assert_eq!(g.order, [2, 0, 1]);
        assert_eq!(g.warnings.len(), 4, "{:?}", g.warnings);
        assert!(g.deps.iter().all(|d| d.len() <= 1));
        // Every service gets started exactly once.
        let mut sorted = g.order.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2]);
    }
}
