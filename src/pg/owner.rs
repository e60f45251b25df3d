//! Running work as a table's owner, as PostgreSQL itself does for index
//! builds, VACUUM and REFRESH MATERIALIZED VIEW: the user id switched to the
//! owner with SECURITY_RESTRICTED_OPERATION, so whatever code the owner
//! attached to the table (triggers, rules, CHECK and exclusion constraints,
//! index expressions, generated columns, column types) runs with the
//! owner's rights, never the caller's, and cannot change the session.

use crate::errors::{internal, or_internal, raise, WfError};
use pgrx::prelude::*;

/// Runs `f` as `owner` with SECURITY_RESTRICTED_OPERATION, then switches
/// back, also when `f` raises (an ERROR unwinds through Rust frames).
pub(crate) fn as_role<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the user id and context saved below.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) }
        }
    }
    let mut user = pg_sys::Oid::INVALID;
    let mut sec = 0;
    // SAFETY: plain reads/writes of the backend's current user id.
    let _restore = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
        pg_sys::SetUserIdAndSecContext(
            owner,
            sec | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION)
                as i32,
        );
        Restore(user, sec)
    };
    f()
}

/// The owner of relation `rel` (None: no such relation).
pub(crate) fn owner_of(rel: pg_sys::Oid) -> Option<pg_sys::Oid> {
    or_internal!(
        Spi::get_one_with_args::<pg_sys::Oid>(
            "SELECT relowner FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $1",
            &[rel.into()],
        ),
        "relation owner"
    )
}

/// Runs one statement `attach` needs on the table itself (adding and
/// numbering `seq`) as the table's owner (module doc); returns the rows it
/// processed. Internal: not executable by PUBLIC (sql/finalize.sql).
#[pg_extern(sql = false)] // declared in sql/attach.sql
fn execute_as_owner(log: Option<pg_sys::Oid>, statement: Option<&str>) -> i64 {
    let (Some(log), Some(statement)) = (log, statement) else {
        raise!(WfError::NullArgument {
            arg: "log or statement"
        })
    };
    let owner = owner_of(log).unwrap_or_else(|| internal!("relation {} vanished", log.to_u32()));
    as_role(owner, || {
        Spi::connect_mut(|c| {
            let done = or_internal!(c.update(statement, None, &[]), "statement as owner");
            i64::try_from(done.len()).unwrap_or(i64::MAX)
        })
    })
}

/// `schema.name` of a relation, quoted as needed (regclass output without
/// the search_path: always qualified); its OID when it is gone.
pub(crate) fn relation_name(rel: pg_sys::Oid) -> String {
    qualified_name(rel).unwrap_or_else(|| rel.to_u32().to_string())
}

/// `schema.name`, each part quoted as needed, from the syscache (Citus
/// hides its shards from queries on `pg_class` in client backends, not
/// from the cache); None when the relation is gone.
pub(crate) fn qualified_name(rel: pg_sys::Oid) -> Option<String> {
    // SAFETY: syscache lookups, each NULL when the object is gone; the
    // strings are palloc'd and copied out at once.
    unsafe {
        let name = pg_sys::get_rel_name(rel);
        if name.is_null() {
            return None;
        }
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(rel));
        if nsp.is_null() {
            return None;
        }
        let quote = |s: *const std::ffi::c_char| {
            std::ffi::CStr::from_ptr(pg_sys::quote_identifier(s))
                .to_string_lossy()
                .into_owned()
        };
        Some(format!("{}.{}", quote(nsp), quote(name)))
    }
}
