//! One error type for the whole core; the Python binding maps each variant to
//! one exception class.

use std::fmt;

/// Everything that can go wrong in the core, with enough context to say
/// which argument, row or tensor was at fault.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// An argument has the wrong shape (message names both shapes).
    Shape(String),
    /// An argument has a value outside its domain (NaN, +inf, bad option).
    Value(String),
    /// An argument has a dtype the operation does not accept.
    Dtype(String),
    /// An output too large for this machine's memory (message names it
    /// and its size), refused instead of aborting the process.
    Memory(String),
}

/// `Result` with [`CoreError`].
pub type Result<T> = std::result::Result<T, CoreError>;

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Shape(m)
            | CoreError::Value(m)
            | CoreError::Dtype(m)
            | CoreError::Memory(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CoreError {}
