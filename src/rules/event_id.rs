//! Event ids: `wevt_` + a ULID made in the backend, monotonic within a
//! session (the DevKit's own id shape, so its clients can keep ordering by id
//! inside one writer).

use pgrx::prelude::*;
use std::cell::RefCell;
use ulid::Generator;

pub const PREFIX: &str = "wevt_";

thread_local! {
    // One generator per backend: a ULID drawn in the same millisecond as the
    // previous one increments its random part, so ids never go backwards
    // within a session.
    static GENERATOR: RefCell<Generator> = const { RefCell::new(Generator::new()) };
}

/// A fresh event id. The monotonic generator can only fail after 2^80 ids in
/// one millisecond; fall back to a fresh random ULID rather than erroring.
pub fn next() -> String {
    let ulid = GENERATOR.with(|g| {
        g.borrow_mut()
            .generate()
            .unwrap_or_else(|_| ulid::Ulid::new())
    });
    let mut id = String::with_capacity(PREFIX.len() + 26);
    id.push_str(PREFIX);
    id.push_str(&ulid.to_string());
    id
}

/// A new event id, as `append_*` would assign it.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn new_event_id() -> String {
    next()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_prefixed_crockford_and_monotonic() {
        let ids: Vec<String> = (0..10_000).map(|_| super::next()).collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
        }
        for id in &ids {
            assert_eq!(id.len(), 31);
            assert!(id.starts_with("wevt_"));
            assert!(id[5..]
                .chars()
                .all(|c| "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c)));
        }
    }
}
