//! Hook tokens across runs: the auditor sees one run at a time, so a token
//! two runs' active hooks held at once is found here, by the writer's rule
//! (src/rules/fold.rs) replayed over the whole log's hooks.

use super::source::Source;
use crate::errors::{internal, or_internal};
use crate::pg::plans;
use crate::rules::lifecycle::EventType;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::collections::HashMap;

/// A token conflict between runs, found in the log: the `at` (seq, or
/// position), id and correlation id of a hook_created whose token an active
/// hook of another run held when it was created.
pub(super) struct CrossRunConflict {
    pub(super) run_id: String,
    pub(super) at: i64,
    pub(super) id: Option<String>,
    pub(super) correlation_id: Option<String>,
    pub(super) detail: String,
}

/// The auditor sees one run at a time; a token held across runs is found
/// here. Every hook_created with a token is replayed in created_at order
/// (then run id, then position) under the writer's rule: it takes its token
/// unless an active hook holds it (released by that hook's hook_disposed or
/// its run's terminal event); a refused one takes nothing, as the writer
/// would not have stored it. Conflicts within one run are the auditor's;
/// those across runs are returned here. Only for sources with a jsonb
/// payload and created_at. `only`: report only that run's hooks, whose
/// tokens are given (so only hooks with those tokens are read: the partial
/// index events_hook_token serves it on the extension's own table).
pub(super) fn cross_run_token_conflicts(
    client: &SpiClient<'_>,
    src: &Source,
    only: Option<(&str, &[String])>,
) -> Vec<CrossRunConflict> {
    if !src.has_jsonb_payload || !src.has_created_at || only.is_some_and(|(_, t)| t.is_empty()) {
        return Vec::new();
    }
    let run_id = only.map(|(r, _)| r);
    let tokens: Option<Vec<String>> = only.map(|(_, t)| t.to_vec());
    let at = if src.has_seq {
        "c.seq::bigint".to_string()
    } else {
        format!(
            "(SELECT pg_catalog.count(*) FROM {} x WHERE x.run_id = c.run_id \
               AND x.id::text COLLATE \"C\" <= c.id::text COLLATE \"C\")",
            src.name
        )
    };
    let micros = |col: &str| format!("(pg_catalog.date_part('epoch', {col}) * 1000000)::bigint");
    // Each hook's release (its hook_disposed, or its run's terminal event,
    // whichever came first) is joined from per-hook and per-run minimums:
    // one pass over the hooks' runs' release events, not one per hook (a
    // run of thousands of hooks made that quadratic).
    let query = format!(
        "WITH hooks AS MATERIALIZED ( \
              SELECT c.run_id, {at} AS at, c.id, c.correlation_id, \
                     c.payload OPERATOR(pg_catalog.->>) 'token' AS token, c.created_at \
                FROM {src} c \
               WHERE c.type = 'hook_created' AND c.run_id IS NOT NULL AND c.correlation_id IS NOT NULL \
                 AND pg_catalog.jsonb_typeof(c.payload OPERATOR(pg_catalog.->) 'token') = 'string' \
                 AND ($1::text[] IS NULL OR c.payload OPERATOR(pg_catalog.->>) 'token' \
                                             IN (SELECT pg_catalog.unnest($1::text[])))), \
              releases AS MATERIALIZED ( \
              SELECT e.run_id, e.correlation_id, e.type::text = 'hook_disposed' AS disposal, e.created_at \
                FROM {src} e \
               WHERE e.run_id IN (SELECT h.run_id FROM hooks h) \
                 AND (e.type::text = 'hook_disposed' OR e.type::text = ANY ({terminals}::text[]))), \
              disposed AS ( \
              SELECT r.run_id, r.correlation_id, pg_catalog.min(r.created_at) AS at \
                FROM releases r WHERE r.disposal GROUP BY r.run_id, r.correlation_id), \
              ended AS ( \
              SELECT r.run_id, pg_catalog.min(r.created_at) AS at \
                FROM releases r WHERE NOT r.disposal GROUP BY r.run_id) \
         SELECT h.run_id::text, h.at, h.id::text, h.correlation_id::text, h.token, {created}, {released} \
           FROM hooks h \
           LEFT JOIN disposed d ON d.run_id = h.run_id AND d.correlation_id = h.correlation_id \
           LEFT JOIN ended t ON t.run_id = h.run_id \
          ORDER BY h.created_at, h.run_id, 2",
        src = src.name,
        terminals = plans::type_list(EventType::RUN_TERMINALS),
        created = micros("h.created_at"),
        released = micros("LEAST(d.at, t.at)"),
    );
    let rows = or_internal!(
        client.select(query.as_str(), None, &[tokens.into()]),
        "token hooks"
    );
    // token → (run, hook, released at)
    let mut held: HashMap<String, (String, String, Option<i64>)> = HashMap::new();
    let mut found = Vec::new();
    for row in rows {
        check_for_interrupts!();
        let get_text = |n: usize| -> String {
            // Selected only where run_id, correlation_id and the token are set.
            or_internal!(row.get::<String>(n), "token hook")
                .unwrap_or_else(|| internal!("token hook column {n} is NULL"))
        };
        let (run, hook, token) = (get_text(1), get_text(4), get_text(5));
        let created: Option<i64> = or_internal!(row.get(6), "token hook time");
        let released: Option<i64> = or_internal!(row.get(7), "token release time");
        let holder_active = held
            .get(&token)
            .is_some_and(|(_, _, until)| match (until, created) {
                (None, _) | (_, None) => true,
                (Some(until), Some(at)) => *until > at,
            });
        if !holder_active {
            held.insert(token, (run, hook, released));
            continue;
        }
        let (holder_run, holder_hook, _) = &held[&token];
        if *holder_run != run && run_id.is_none_or(|r| r == run) {
            found.push(CrossRunConflict {
                detail: format!(
                    "token \"{token}\" was held by active hook \"{holder_hook}\" of run \"{holder_run}\"; \
                     hook \"{hook}\" cannot take it"
                ),
                // A hook row whose seq is NULL (the stream reports it as
                // invalid_event) has no position to name: 0.
                at: or_internal!(row.get(2), "token hook position").unwrap_or(0),
                id: or_internal!(row.get(3), "token hook id"),
                correlation_id: Some(hook),
                run_id: run,
            });
        }
    }
    found
}
