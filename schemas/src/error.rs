//! A problem with one field of a request, named by its JSON path.

use serde::Serialize;
use std::fmt;

/// What kind of problem a [`FieldError`] is; it decides the HTTP status of the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The value is well-formed but breaks a rule (422).
    Invalid,
    /// The body is not parseable at all (400).
    Malformed,
    /// The id was already used with a different payload (409).
    Conflict,
    /// The key may not act for this tenant (403).
    Forbidden,
    /// The request is larger than a configured limit (413).
    TooLarge,
}

/// One problem, e.g. `events[3].properties.input_tokens: must be a non-negative integer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON path of the offending field, `body` for the request as a whole.
    pub path: String,
    /// Why the field is refused, in words a user can act on.
    pub message: String,
    /// Kind of problem.
    #[serde(skip)]
    pub kind: ErrorKind,
}

impl FieldError {
    /// A rule violation (422).
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, path, message)
    }

    /// A problem of the given kind.
    pub fn new(kind: ErrorKind, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            kind,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The kind that decides the status when a request has several problems: the most severe wins.
pub fn dominant_kind(errors: &[FieldError]) -> ErrorKind {
    errors
        .iter()
        .map(|e| e.kind)
        .max()
        .unwrap_or(ErrorKind::Invalid)
}
