//! What every adapter's settings share: a value out of range is an [`InvalidSetting`]
//! naming the field within its section, so the configuration can name it in full
//! (`redis.operation_timeout: must be more than 0`).

/// A setting out of range or inconsistent with another: which one, and what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidSetting {
    /// The field's name within its section (`operation_timeout`).
    pub field: &'static str,
    /// What is wrong with it (`must be more than 0`).
    pub problem: &'static str,
}

/// `Err` naming `field` and its `problem`; for the `validate` methods.
pub(crate) fn invalid(field: &'static str, problem: &'static str) -> Result<(), InvalidSetting> {
    Err(InvalidSetting { field, problem })
}
