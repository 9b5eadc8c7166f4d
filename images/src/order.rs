//! Start order from `depends_on`: a stable topological sort.

use heapless::Vec;

use crate::manifest::{Manifest, MAX_CONTAINERS};

/// Container indexes in start order; stop order is the reverse.
pub type Order = Vec<usize, MAX_CONTAINERS>;

/// Why no order exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderError {
    /// The container at this index is part of (or waits on) a cycle.
    Cycle(usize),
}

/// Containers ordered so every one comes after what it depends on. Among
/// containers that are ready at the same time, manifest order wins, so the
/// result is deterministic. Unknown dependency names are ignored here
/// (validation reports them).
pub fn start_order(m: &Manifest) -> Result<Order, OrderError> {
    let n = m.containers.len();
    let mut placed = [false; MAX_CONTAINERS];
    let mut order = Order::new();
    while order.len() < n {
        let ready = m.containers.iter().enumerate().find(|(i, c)| {
            !placed.get(*i).copied().unwrap_or(true)
                && c.depends_on.iter().all(|d| match m.container(d) {
                    Some((j, _)) => placed.get(j).copied().unwrap_or(false),
                    None => true,
                })
        });
        match ready {
            Some((i, _)) => {
                if let Some(p) = placed.get_mut(i) {
                    *p = true;
                }
                if order.push(i).is_err() {
                    break;
                }
            }
            None => {
                let stuck = (0..n).find(|i| !placed.get(*i).copied().unwrap_or(true)).unwrap_or(0);
                return Err(OrderError::Cycle(stuck));
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::{container, manifest};

    fn names(m: &Manifest, o: &Order) -> std::vec::Vec<std::string::String> {
        o.iter().map(|i| m.containers[*i].name.as_str().to_owned()).collect()
    }

    #[test]
    fn dependencies_come_first_and_ties_keep_manifest_order() {
        let m = manifest(&[
            container("web", &["api", "db"]),
            container("api", &["db"]),
            container("log", &[]),
            container("db", &[]),
        ]);
        let o = start_order(&m).unwrap_or_default();
        assert_eq!(names(&m, &o), ["log", "db", "api", "web"]);
    }

    #[test]
    fn a_cycle_is_an_error() {
        let m = manifest(&[container("a", &[]), container("b", &["c"]), container("c", &["b"])]);
        assert_eq!(start_order(&m), Err(OrderError::Cycle(1)));
    }
}
