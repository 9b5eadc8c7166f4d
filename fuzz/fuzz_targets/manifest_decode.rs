//! The manifest payload alone: the postcard decode `open_manifest` does once
//! the signature verified, then `Manifest::validate` and the start order the
//! supervisor derives from it. No crypto, so this runs much faster than
//! `envelope_open` and goes deeper into the decoder and the validator.
//!
//! Checks, besides never panicking:
//! - `from_bytes` and `take_from_bytes` agree;
//! - a decoded manifest re-encodes (into at most the bytes it was decoded
//!   from) and decodes back to the same value;
//! - `validate` returns exactly the first problem `for_each_problem` reports,
//!   and every problem formats;
//! - a valid manifest has a start order: a permutation of its containers in
//!   which every dependency starts first; `Manifest::start_order` fails only with a
//!   cycle, which `validate` then reports.

#![no_main]

use cairn_fuzz::display_len;
use cairn_format::manifest::{Manifest, ValidationError};
use cairn_format::order::OrderError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let taken = postcard::take_from_bytes::<Manifest>(data);
    let whole = postcard::from_bytes::<Manifest>(data);
    let (m, rest) = match (taken, whole) {
        (Ok((m, rest)), Ok(w)) => {
            assert_eq!(m, w, "from_bytes and take_from_bytes disagree");
            (m, rest)
        }
        (Err(_), Err(_)) => return,
        (t, w) => panic!("from_bytes {:?} vs take_from_bytes {:?}", w.is_ok(), t.is_ok()),
    };
    let consumed = data.len() - rest.len();

    // Round trip through the encoder.
    let mut buf = vec![0u8; consumed.max(1)];
    let encoded = match postcard::to_slice(&m, &mut buf) {
        Ok(e) => e.len(),
        Err(e) => panic!("decoded manifest does not re-encode into {consumed} bytes: {e:?}"),
    };
    assert!(encoded <= consumed);
    let back: Manifest = match postcard::from_bytes(&buf[..encoded]) {
        Ok(b) => b,
        Err(e) => panic!("re-encoded manifest does not decode: {e:?}"),
    };
    assert_eq!(back, m, "re-encoded manifest decodes to another value");

    // Validation.
    let mut problems: Vec<ValidationError> = Vec::new();
    m.for_each_problem(|p| problems.push(p));
    for p in &problems {
        display_len(p);
    }
    let valid = m.validate();
    assert_eq!(valid.as_ref().err(), problems.first(), "validate is not the first problem");

    // Lookups used by the device find the first entry of a name.
    for l in &m.layers {
        let first = m.layers.iter().find(|o| o.name == l.name);
        assert_eq!(m.layer(&l.name), first);
    }
    for c in &m.containers {
        let found = m.container(&c.name).map(|(i, _)| i);
        assert_eq!(found, m.containers.iter().position(|o| o.name == c.name));
    }

    // Start order.
    match m.start_order() {
        Ok(order) => {
            let n = m.containers.len();
            assert_eq!(order.len(), n);
            let mut seen = vec![false; n];
            for (pos, &i) in order.iter().enumerate() {
                assert!(i < n && !seen[i], "order is not a permutation: {order:?}");
                seen[i] = true;
                for d in &m.containers[i].depends_on {
                    if let Some((j, _)) = m.container(d) {
                        let dpos = order.iter().position(|&k| k == j);
                        assert!(dpos.is_some_and(|p| p < pos), "{:?} starts before its dependency {d:?}", i);
                    }
                }
            }
            assert!(!problems.iter().any(|p| matches!(p, ValidationError::DependencyCycle(_))));
        }
        Err(OrderError::Cycle(i)) => {
            assert!(i < m.containers.len());
            assert!(valid.is_err(), "a manifest with a dependency cycle validates");
            assert!(problems.iter().any(|p| matches!(p, ValidationError::DependencyCycle(_))));
        }
    }
});
