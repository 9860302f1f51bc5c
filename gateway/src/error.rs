//! Request failures and closes, and how they reach the wire: a failed request becomes the
//! protocol's error frame ([`RequestError`]) and why a connection ends becomes a close code
//! ([`CloseReason`]). The crate's own error types say beside their definitions what they become
//! (`From<…> for RequestError`), so this module depends on none of them; the bus's and the
//! routers' errors (of `chat_proto`) are turned here. Nothing internal is ever shown to a client.

use std::borrow::Cow;
use std::time::Duration;

use chat_proto::client::{self, ErrorCode, ErrorData, close};
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
    /// A failure with `code`: for the constructors below, which name the code.
    fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
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

    /// `UNAUTHORIZED`: no valid token (the socket then closes with 4401).
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
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
        Self::unavailable_because("the service is temporarily unavailable; retry shortly")
    }

    /// `UNAVAILABLE`, saying what is missing (safe to show: no address, no internals).
    pub fn unavailable_because(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
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

/// Why the server closes a connection; each has its close code and the reason sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Done (the client left, or the server has nothing more to say).
    Normal,
    /// A message over the transport cap.
    TooBig,
    /// The node is shutting down: reconnect elsewhere and resume.
    Restarting,
    /// No valid token, or it expired.
    Unauthorized,
    /// Not allowed (banned).
    Forbidden,
    /// No `auth` frame in time.
    AuthTimeout,
    /// Over a limit: sessions per user, rooms per socket, failed authentications.
    OverLimit,
    /// The socket could not take its messages: reconnect and resume.
    TooSlow,
    /// Something failed on the server: reconnect.
    Internal,
}

impl CloseReason {
    const ALL: [Self; 9] = [
        Self::Normal,
        Self::TooBig,
        Self::Restarting,
        Self::Unauthorized,
        Self::Forbidden,
        Self::AuthTimeout,
        Self::OverLimit,
        Self::TooSlow,
        Self::Internal,
    ];

    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => close::NORMAL,
            Self::TooBig => close::TOO_BIG,
            Self::Restarting => close::RESTARTING,
            Self::Unauthorized => close::UNAUTHORIZED,
            Self::Forbidden => close::FORBIDDEN,
            Self::AuthTimeout => close::AUTH_TIMEOUT,
            Self::OverLimit => close::OVER_LIMIT,
            Self::TooSlow => close::TOO_SLOW,
            Self::Internal => close::INTERNAL,
        }
    }

    /// The reason sent in the close frame.
    pub fn text(self) -> &'static str {
        match self {
            Self::Normal => "bye",
            Self::TooBig => "message too big",
            Self::Restarting => "server restarting; reconnect and resume",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::AuthTimeout => "no auth in time",
            Self::OverLimit => "over a limit",
            Self::TooSlow => "too slow; reconnect and resume",
            Self::Internal => "internal error; reconnect",
        }
    }

    /// The reason as a metric's label: `auth_timeout`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::TooBig => "too_big",
            Self::Restarting => "restarting",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::AuthTimeout => "auth_timeout",
            Self::OverLimit => "over_limit",
            Self::TooSlow => "too_slow",
            Self::Internal => "internal",
        }
    }

    /// The reason with close code `code`, if it is one of the server's.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.code() == code)
    }

    /// Why a socket that could not join its rooms is closed: over its room limit (the only
    /// `FORBIDDEN` a join gives), or a fault.
    pub fn of_failed_join(error: &RequestError) -> Self {
        if error.code == ErrorCode::Forbidden {
            Self::OverLimit
        } else {
            Self::Internal
        }
    }
}

impl From<chat_proto::routing::RoutingError> for RequestError {
    fn from(error: chat_proto::routing::RoutingError) -> Self {
        tracing::debug!(%error, "router query failed");
        Self::unavailable()
    }
}

impl From<chat_proto::bus::BusError> for RequestError {
    fn from(error: chat_proto::bus::BusError) -> Self {
        tracing::warn!(%error, "bus failure");
        Self::unavailable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_reason_has_its_own_code_and_comes_back_from_it() {
        for reason in CloseReason::ALL {
            assert_eq!(CloseReason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(CloseReason::from_code(0), None);
        let over = RequestError::forbidden("at most 2 rooms");
        assert_eq!(CloseReason::of_failed_join(&over), CloseReason::OverLimit);
        let down = RequestError::unavailable();
        assert_eq!(CloseReason::of_failed_join(&down), CloseReason::Internal);
    }
}
