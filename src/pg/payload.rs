//! The `payload jsonb` argument, passed through untouched.
//!
//! pgrx's `JsonB` turns a jsonb datum into text and then into a serde value
//! (and back again on the way into SPI): two full conversions per append,
//! which would dominate the cost of a large payload. Workflow payloads are
//! opaque to the database, so [`Payload`] keeps the detoasted datum as it is
//! and reads only the root container's header to check that it is an object.

use crate::errors::{WfError, WfResult};
use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::{FromDatum, GucContext, GucFlags, GucRegistry, GucSetting, IntoDatum};

/// Upper bound on a payload's stored size, in bytes (`workflow_ext.max_payload_bytes`).
pub static MAX_PAYLOAD_BYTES: GucSetting<i32> = GucSetting::<i32>::new(4 * 1024 * 1024);

pub fn register_gucs() {
    // PGC_SUSET: the limit protects the server, so only a superuser (or a
    // role granted SET on it) may raise it for a session.
    GucRegistry::define_int_guc(
        c"workflow_ext.max_payload_bytes",
        c"Largest event payload, in bytes, that workflow_ext accepts.",
        c"Appends with a larger jsonb payload fail with SQLSTATE 54000.",
        &MAX_PAYLOAD_BYTES,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
}

// The root header word of a jsonb value (src/include/utils/jsonb.h).
const JB_FOBJECT: u32 = 0x2000_0000;

/// A jsonb datum, detoasted, not converted.
#[derive(Clone, Copy, Debug)]
pub struct Payload(pg_sys::Datum);

impl Payload {
    /// Checks the payload is a JSON object no larger than the configured limit.
    pub fn check(self) -> WfResult<Self> {
        // SAFETY: self.0 is a detoasted jsonb varlena (see from_polymorphic_datum).
        let (header, bytes) = unsafe {
            let ptr = self.0.cast_mut_ptr::<pg_sys::varlena>();
            let len = pgrx::varlena::varsize_any_exhdr(ptr);
            let data = pgrx::varlena::vardata_any(ptr) as *const u8;
            let header = if len >= 4 {
                u32::from_ne_bytes(*(data as *const [u8; 4]))
            } else {
                0
            };
            (header, len)
        };
        let limit = MAX_PAYLOAD_BYTES.get().max(0) as usize;
        if bytes > limit {
            return Err(WfError::PayloadTooLarge { bytes, limit });
        }
        if header & JB_FOBJECT == 0 {
            return Err(WfError::PayloadNotObject);
        }
        Ok(self)
    }

    pub fn datum(self) -> pg_sys::Datum {
        self.0
    }

    /// Wraps a jsonb column value read from a heap tuple.
    ///
    /// # Safety
    /// `datum` must be a non-null jsonb datum.
    pub unsafe fn from_jsonb_datum(datum: pg_sys::Datum) -> Self {
        unsafe {
            let detoasted = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            Payload(pg_sys::Datum::from(detoasted))
        }
    }
}

impl FromDatum for Payload {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            None
        } else {
            Some(unsafe { Payload::from_jsonb_datum(datum) })
        }
    }
}

impl IntoDatum for Payload {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: the argument is declared `jsonb` in SQL, so the datum is one.
unsafe impl<'fcx> ArgAbi<'fcx> for Payload {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| crate::errors::internal!("argument {index} must not be null"))
    }
    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

// SAFETY: maps to the SQL type jsonb, which is what the datum holds.
unsafe impl SqlTranslatable for Payload {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(Payload);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}
