//! Failed requests, rendered as a `meta/v1 Status` the way the API server does, so kube-rs turns
//! them into `kube::Error::Api` with the right `code` and `reason`.

use serde_json::{Value, json};

use crate::fields::{Conflict, dotted};

/// A request the double refuses; becomes the response status code and a `Status` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: u16,
    /// `StatusReason` as the API server spells it (`NotFound`, `AlreadyExists`, `Conflict`, ...).
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    /// `details.name` / `details.kind` (the plural, as the API server reports it).
    pub(crate) details: Option<(String, String)>,
}

// === impl Failure ===

impl Failure {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, plural: &str, name: &str) -> Self {
        self.details = Some((name.to_string(), plural.to_string()));
        self
    }

    pub(crate) fn not_found(plural: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{plural} \"{name}\" not found"))
            .with_details(plural, name)
    }

    pub(crate) fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub(crate) fn already_exists(plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{plural} \"{name}\" already exists"),
        )
        .with_details(plural, name)
    }

    pub(crate) fn conflict(plural: &str, name: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again"
        );
        Self::new(409, "Conflict", message).with_details(plural, name)
    }

    /// A server-side apply that would change fields other managers own (without `force`), in the
    /// API server's words: `Apply failed with 1 conflict: conflict with "m": .spec.x`.
    pub(crate) fn apply_conflict(plural: &str, name: &str, conflicts: &[Conflict]) -> Self {
        let message = match conflicts {
            [(manager, field)] => format!(
                "Apply failed with 1 conflict: conflict with \"{manager}\": {}",
                dotted(field)
            ),
            _ => {
                let lines: Vec<String> = conflicts
                    .iter()
                    .map(|(manager, field)| {
                        format!("conflict with \"{manager}\": {}", dotted(field))
                    })
                    .collect();
                format!(
                    "Apply failed with {} conflicts: {}",
                    conflicts.len(),
                    lines.join("\n")
                )
            }
        };
        Self::new(409, "Conflict", message).with_details(plural, name)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn invalid(plural: &str, name: &str, message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message).with_details(plural, name)
    }

    pub(crate) fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {content_type:?}"
            ),
        )
    }

    /// A watch whose `resourceVersion` predates the retained history.
    pub(crate) fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// The `Status` object.
    pub(crate) fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, kind)) = &self.details {
            status["details"] = json!({"name": name, "kind": kind});
        }
        status
    }
}
