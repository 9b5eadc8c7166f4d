//! Start order from dependencies: a stable topological sort over indexes.
//! It knows nothing of the manifest ([`crate::manifest::Manifest::start_order`]
//! turns `depends_on` names into indexes).

use alloc::vec;
use alloc::vec::Vec;

/// Indexes in start order; stop order is the reverse.
pub type Order = Vec<usize>;

/// Why no order exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderError {
    /// The item at this index is part of (or waits on) a cycle.
    Cycle(usize),
}

/// Indexes `0..deps.len()` ordered so every one comes after the indexes in
/// its `deps` entry. Among items that are ready at the same time, the lower
/// index wins, so the result is deterministic. Indexes out of range are
/// ignored.
pub fn start_order(deps: &[Vec<usize>]) -> Result<Order, OrderError> {
    let n = deps.len();
    let mut placed = vec![false; n];
    let mut order = Order::with_capacity(n);
    while order.len() < n {
        let ready = deps.iter().enumerate().find(|(i, d)| {
            !placed.get(*i).copied().unwrap_or(true) && d.iter().all(|j| placed.get(*j).copied().unwrap_or(true))
        });
        match ready {
            Some((i, _)) => {
                if let Some(p) = placed.get_mut(i) {
                    *p = true;
                }
                order.push(i);
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

    #[test]
    fn dependencies_come_first_and_ties_keep_index_order() {
        // web -> api, db; api -> db; log; db
        let o = start_order(&[vec![1, 3], vec![3], vec![], vec![]]).unwrap();
        assert_eq!(o, [2, 3, 1, 0]);
    }

    #[test]
    fn a_cycle_is_an_error() {
        assert_eq!(start_order(&[vec![], vec![2], vec![1]]), Err(OrderError::Cycle(1)));
    }

    #[test]
    fn out_of_range_dependencies_are_ignored() {
        assert_eq!(start_order(&[vec![7]]), Ok(vec![0]));
    }
}
