use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use spec::{ApiErrorBody, FieldError, InvalidInput};

/// Every error the API answers with, rendered as the one error body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidInput(InvalidInput),
    /// No credentials, or invalid ones (401; the caller adds `WWW-Authenticate`, RFC 6750).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials that do not allow the request (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("database {0:?} already exists")]
    DatabaseAlreadyExists(String),
    #[error("{0}")]
    DatabaseNotModifiable(String),
    #[error("{0}")]
    Conflict(String),
    /// The spec would remove a node's primary with nothing to take over (ADR 016): each
    /// error names the node's `spec.nodes[i]`.
    #[error("{0}")]
    PrimaryWouldBeLost(InvalidInput),
    #[error("{0}")]
    TaskNotCancelable(String),
    /// Another task of the database is unfinished (409, the reference API's name).
    #[error("{0}")]
    OperationInProgress(String),
    /// The node's state does not allow the operation now (409, naming the field or path
    /// parameter that would allow it, like `InvalidInput`).
    #[error("{0}")]
    OperationNotPossible(InvalidInput),
    /// A fixed host port the spec asks for is held on that host by another database (409,
    /// with the offending field paths, like `InvalidInput`).
    #[error("{0}")]
    PortTaken(InvalidInput),
    /// A request body larger than the limit, in bytes (413).
    #[error("the request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// etcd reached its quota and refuses writes (507, RFC 4918 section 11.5).
    #[error("{0}")]
    OutOfSpace(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(path: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidInput(InvalidInput::one(path, message))
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::DatabaseAlreadyExists(_) => (StatusCode::CONFLICT, "database_already_exists"),
            ApiError::DatabaseNotModifiable(_) => (StatusCode::CONFLICT, "database_not_modifiable"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PrimaryWouldBeLost(_) => (StatusCode::CONFLICT, "primary_would_be_lost"),
            ApiError::TaskNotCancelable(_) => (StatusCode::CONFLICT, "task_not_cancelable"),
            ApiError::OperationInProgress(_) => {
                (StatusCode::CONFLICT, "operation_already_in_progress")
            }
            ApiError::OperationNotPossible(_) => (StatusCode::CONFLICT, "operation_not_possible"),
            ApiError::PortTaken(_) => (StatusCode::CONFLICT, "port_taken"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::OutOfSpace(_) => (StatusCode::INSUFFICIENT_STORAGE, "etcd_out_of_space"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        }
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        if e.is_out_of_space() {
            ApiError::OutOfSpace(e.to_string())
        } else if e.is_unavailable() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, name) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let errors: Vec<FieldError> = match &self {
            ApiError::InvalidInput(e)
            | ApiError::PortTaken(e)
            | ApiError::OperationNotPossible(e)
            | ApiError::PrimaryWouldBeLost(e) => e.errors.clone(),
            _ => Vec::new(),
        };
        let body = ApiErrorBody {
            name: name.to_string(),
            message: self.to_string(),
            errors,
        };
        (status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's NOSPACE is a 507 that says so, not a 503 "unavailable".
    #[test]
    fn etcd_out_of_space_is_507() {
        let status = etcd_client::Error::GRpcStatus(tonic::Status::resource_exhausted(
            "etcdserver: mvcc: database space exceeded",
        ));
        let e = ApiError::from(store::StoreError::from(status));
        assert_eq!(e.parts().0, StatusCode::INSUFFICIENT_STORAGE);
        assert!(e.to_string().contains("etcd is out of space"), "{e}");
        let busy = etcd_client::Error::GRpcStatus(tonic::Status::resource_exhausted(
            "etcdserver: too many requests",
        ));
        let e = ApiError::from(store::StoreError::from(busy));
        assert_eq!(e.parts().0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
