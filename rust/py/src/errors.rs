//! The one place where core errors become Python exceptions.
//!
//! The exception classes live in `quantdrift/_errors.py`, because the
//! hierarchy needs multiple inheritance (`ShapeError` is both a
//! `QuantdriftError` and a `ValueError`), which Python spells best.

use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use quantdrift_core::CoreError;

/// A core error on its way to Python.
pub struct Error(pub CoreError);

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        Error(e)
    }
}

fn class_name(e: &CoreError) -> &'static str {
    match e {
        CoreError::Shape(_) => "ShapeError",
        CoreError::Value(_) => "InputError",
        CoreError::Dtype(_) => "DtypeError",
        CoreError::Memory(_) => "MemoryError",
    }
}

impl From<Error> for PyErr {
    fn from(Error(e): Error) -> PyErr {
        if let CoreError::Memory(m) = e {
            // Python's own class, as numpy raises for an array too large.
            return PyMemoryError::new_err(m);
        }
        python_error(class_name(&e), e.to_string())
    }
}

/// An instance of the exception class `name` of `quantdrift._errors`.
pub fn python_error(name: &str, message: String) -> PyErr {
    Python::attach(|py| {
        let class = py
            .import("quantdrift._errors")
            .and_then(|m| m.getattr(name));
        match class {
            Ok(class) => match class.call1((message.clone(),)) {
                Ok(instance) => PyErr::from_value(instance),
                Err(err) => err,
            },
            // The package is always importable when _core is; this only
            // guards against a broken install.
            Err(_) => PyValueError::new_err(message),
        }
    })
}

/// `Result` for binding functions.
pub type Result<T> = std::result::Result<T, Error>;
