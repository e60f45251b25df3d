//! Argument validation shared by every entry point (functions and the raw
//! INSERT trigger): pure Rust, so the same input gets the same error
//! whichever path it came through.

use crate::errors::{WfError, WfResult, MAX_IDENT_BYTES};
use crate::rules::lifecycle::{CorrelationRule, EventType};

/// A validated event address: what the lifecycle check needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventAddress<'a> {
    pub run_id: &'a str,
    pub correlation_id: Option<&'a str>,
    pub event: EventType,
}

impl EventAddress<'_> {
    /// Whether the index `workflow_events_entity_creation_unique` makes this
    /// event unique per run and correlation id.
    /// The lifecycle's refusal of this event, in a run in `run_state`.
    pub(crate) fn refused(
        &self,
        violation: crate::rules::lifecycle::Violation,
        run_state: Option<crate::rules::lifecycle::State>,
    ) -> WfError {
        WfError::Refused {
            violation,
            run_id: self.run_id.to_string(),
            correlation_id: self.correlation_id.map(str::to_string),
            event: self.event,
            run_state,
        }
    }

    pub const fn is_unique_creation(&self) -> bool {
        self.event.is_unique_creation(self.correlation_id.is_some())
    }
}

/// A required identifier: not NULL, not empty, at most [`MAX_IDENT_BYTES`].
pub fn ident<'a>(arg: &'static str, value: Option<&'a str>) -> WfResult<&'a str> {
    let v = value.ok_or(WfError::NullArgument { arg })?;
    optional_ident(arg, Some(v)).map(|_| v)
}

/// An identifier that may be NULL; when given, it obeys [`ident`]'s rules.
pub fn optional_ident<'a>(arg: &'static str, value: Option<&'a str>) -> WfResult<Option<&'a str>> {
    match value {
        None => Ok(None),
        Some("") => Err(WfError::EmptyArgument { arg }),
        Some(v) if v.len() > MAX_IDENT_BYTES => Err(WfError::TooLong { arg, len: v.len() }),
        Some(v) => Ok(Some(v)),
    }
}

pub fn event_type(value: Option<&str>) -> WfResult<EventType> {
    let v = value.ok_or(WfError::NullArgument { arg: "type" })?;
    EventType::parse(v).ok_or_else(|| WfError::UnknownEventType {
        given: v.to_string(),
    })
}

/// Validates the three columns that address an event.
pub fn address<'a>(
    run_id: Option<&'a str>,
    correlation_id: Option<&'a str>,
    type_name: Option<&str>,
) -> WfResult<EventAddress<'a>> {
    let run_id = ident("run_id", run_id)?;
    let event = event_type(type_name)?;
    let correlation_id = optional_ident("correlation_id", correlation_id)?;
    match (event.correlation_rule(), correlation_id) {
        (CorrelationRule::Required, None) => Err(WfError::CorrelationRequired { event }),
        (CorrelationRule::Forbidden, Some(_)) => Err(WfError::CorrelationForbidden { event }),
        _ => Ok(EventAddress {
            run_id,
            correlation_id,
            event,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: WfResult<EventAddress<'_>>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(WfError::NullArgument { .. }) => "null",
            Err(WfError::EmptyArgument { .. }) => "empty",
            Err(WfError::TooLong { .. }) => "too_long",
            Err(WfError::UnknownEventType { .. }) => "unknown_type",
            Err(WfError::CorrelationRequired { .. }) => "correlation_required",
            Err(WfError::CorrelationForbidden { .. }) => "correlation_forbidden",
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn address_cases() {
        let long = "x".repeat(MAX_IDENT_BYTES + 1);
        let max = "x".repeat(MAX_IDENT_BYTES);
        #[rustfmt::skip]
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a str);
        let cases: &[Case<'_>] = &[
            (Some("r"), None, Some("run_created"), "ok"),
            (Some("r"), Some("step_1"), Some("step_created"), "ok"),
            (Some("r"), None, Some("attr_set"), "ok"),
            (Some("r"), Some("color"), Some("attr_set"), "ok"),
            (Some(&max), Some(&max), Some("wait_created"), "ok"),
            (None, Some("s"), Some("step_created"), "null"),
            (Some(""), Some("s"), Some("step_created"), "empty"),
            (Some(&long), Some("s"), Some("step_created"), "too_long"),
            (Some("r"), Some(&long), Some("step_created"), "too_long"),
            (Some("r"), Some(""), Some("step_created"), "empty"),
            (Some("r"), Some("s"), None, "null"),
            (Some("r"), Some("s"), Some("step_create"), "unknown_type"),
            (Some("r"), Some("s"), Some("STEP_CREATED"), "unknown_type"),
            (Some("r"), Some("s"), Some(""), "unknown_type"),
            (
                Some("r"),
                None,
                Some("step_created"),
                "correlation_required",
            ),
            (
                Some("r"),
                None,
                Some("hook_received"),
                "correlation_required",
            ),
            (
                Some("r"),
                Some("c"),
                Some("run_created"),
                "correlation_forbidden",
            ),
            (
                Some("r"),
                Some("c"),
                Some("run_cancelled"),
                "correlation_forbidden",
            ),
        ];
        for (run, corr, ty, want) in cases {
            assert_eq!(
                code(address(*run, *corr, *ty)),
                *want,
                "{run:?} {corr:?} {ty:?}"
            );
        }
    }
}
