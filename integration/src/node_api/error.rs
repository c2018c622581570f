//! Request errors: the store's, and their Kubernetes `Status` bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Why a request on the store failed; [`StoreError::code`] and
/// [`StoreError::reason`] give the apiserver's HTTP code and `Status` reason.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// No such object.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// `nodes` or `pods`.
        resource: &'static str,
        /// The object's name.
        name: String,
    },
    /// Create of an existing object.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// `nodes` or `pods`.
        resource: &'static str,
        /// The object's name.
        name: String,
    },
    /// A write whose `metadata.resourceVersion` precondition failed.
    #[error("Operation cannot be fulfilled on nodes \"{0}\": the object has been modified; please apply your changes to the latest version and try again")]
    Conflict(String),
    /// A malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// A well-formed but unacceptable object.
    #[error("{0}")]
    Invalid(String),
    /// A watch from a resourceVersion older than the event history.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired {
        /// The resourceVersion asked for.
        requested: u64,
        /// The oldest resourceVersion a watch can still start from.
        oldest: u64,
    },
}

impl StoreError {
    /// The HTTP status code the apiserver answers with.
    pub fn code(&self) -> u16 {
        match self {
            StoreError::NotFound { .. } => 404,
            StoreError::AlreadyExists { .. } | StoreError::Conflict(_) => 409,
            StoreError::BadRequest(_) => 400,
            StoreError::Invalid(_) => 422,
            StoreError::Expired { .. } => 410,
        }
    }

    /// The `Status.reason` the apiserver gives.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "NotFound",
            StoreError::AlreadyExists { .. } => "AlreadyExists",
            StoreError::Conflict(_) => "Conflict",
            StoreError::BadRequest(_) => "BadRequest",
            StoreError::Invalid(_) => "Invalid",
            StoreError::Expired { .. } => "Expired",
        }
    }
}

/// An error answered as a Kubernetes `Status` object.
#[derive(Debug)]
pub struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    /// An error with HTTP `code`, `Status.reason` and message.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(details), Some(map)) = (&self.details, status.as_object_mut()) {
            map.insert("details".into(), details.clone());
        }
        status
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        let details = match &error {
            StoreError::NotFound { resource, name }
            | StoreError::AlreadyExists { resource, name } => {
                Some(json!({"name": name, "kind": resource}))
            }
            StoreError::Conflict(name) => Some(json!({"name": name, "kind": "nodes"})),
            _ => None,
        };
        ApiError {
            code: error.code(),
            reason: error.reason(),
            message: error.to_string(),
            details,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(self.status())).into_response()
    }
}
