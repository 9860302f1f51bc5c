//! Request failures and how they reach the wire: the one place where internal errors become
//! protocol error codes. Nothing internal is ever shown to a client.

use std::borrow::Cow;
use std::time::Duration;

use chat_proto::client::{self, ErrorCode, ErrorData};
use chat_proto::timestamp::{iso8601, now_ms};

/// A request that failed, as the client will be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The protocol code.
    pub code: ErrorCode,
    /// A message for people.
    pub message: Cow<'static, str>,
    /// With `RATE_LIMITED`: when to try again.
    pub retry_after: Option<Duration>,
}

impl RequestError {
    /// A failure with `code`.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `RATE_LIMITED`: try again after `retry_after`.
    pub fn rate_limited(message: impl Into<Cow<'static, str>>, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }

    /// `VALIDATION_ERROR`.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::ValidationError, message)
    }

    /// `PROTOCOL_ERROR`.
    pub fn protocol(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::ProtocolError, message)
    }

    /// `FORBIDDEN`.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `NOT_FOUND`.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `UNAVAILABLE`: a dependency is down; retry later.
    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "the service is temporarily unavailable; retry shortly",
        )
    }

    /// `INTERNAL_ERROR`.
    pub fn internal() -> Self {
        Self::new(ErrorCode::InternalError, "internal error")
    }

    /// The `error` frame, answering `request_id` when there is one.
    pub fn to_frame(&self, request_id: Option<&str>, original_event: Option<&str>) -> String {
        client::error(
            request_id,
            &ErrorData {
                code: self.code,
                message: &self.message,
                recoverable: self.code.recoverable(),
                original_event,
                retry_after_ms: self
                    .retry_after
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
                timestamp: iso8601(now_ms()),
            },
        )
    }
}

impl From<crate::worker::CallError> for RequestError {
    fn from(error: crate::worker::CallError) -> Self {
        use crate::worker::CallError;
        use chat_proto::v1::rpc_error::Code;
        match error {
            CallError::Unavailable => Self::unavailable(),
            CallError::Rejected { code, message } => match code {
                Code::NotFound => Self::not_found(message),
                Code::Forbidden => Self::forbidden(message),
                Code::Invalid => Self::invalid(message),
                Code::Internal => Self::internal(),
            },
            CallError::Malformed => Self::internal(),
        }
    }
}

impl From<chat_proto::bus::BusError> for RequestError {
    fn from(error: chat_proto::bus::BusError) -> Self {
        tracing::warn!(%error, "bus failure");
        Self::unavailable()
    }
}
