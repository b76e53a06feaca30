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
        Self { path: path.into(), message: message.into(), kind }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The kind that decides the status when a request has several problems: the most severe wins.
pub fn dominant_kind(errors: &[FieldError]) -> ErrorKind {
    errors.iter().map(|e| e.kind).max().unwrap_or(ErrorKind::Invalid)
}

impl ErrorKind {
    /// HTTP status of a request refused for this kind of problem.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 422,
            ErrorKind::Malformed => 400,
            ErrorKind::Conflict => 409,
            ErrorKind::Forbidden => 403,
            ErrorKind::TooLarge => 413,
        }
    }
}

/// Reason phrase of an HTTP status, for error bodies.
pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// An RFC 7807 `application/problem+json` body, OpenMeter's error style; field errors go under
/// `extensions.validationErrors`.
pub fn problem_body(status: u16, detail: &str, errors: &[FieldError]) -> serde_json::Value {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": reason(status),
        "status": status,
        "detail": detail,
    });
    if !errors.is_empty() {
        body["extensions"] = serde_json::json!({ "validationErrors": errors });
    }
    body
}

/// A Lago-style error body: `{"status", "error", "code", "error_details": {path: [messages]}}`.
pub fn lago_body(status: u16, code: &str, errors: &[FieldError]) -> serde_json::Value {
    let mut body = serde_json::json!({ "status": status, "error": reason(status) });
    if !code.is_empty() {
        body["code"] = code.into();
    }
    if !errors.is_empty() {
        let mut details = serde_json::Map::new();
        for e in errors {
            let entry = details.entry(e.path.clone()).or_insert_with(|| serde_json::Value::Array(vec![]));
            if let serde_json::Value::Array(list) = entry {
                list.push(e.message.clone().into());
            }
        }
        body["error_details"] = details.into();
    }
    body
}

/// One line saying what is wrong: the first problem, and how many more there are.
pub fn summary(errors: &[FieldError]) -> String {
    match errors {
        [] => String::new(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more problems)", rest.len()),
    }
}
