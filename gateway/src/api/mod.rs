//! The server API: HTTP/JSON on its own listener (`--api-listen`), for the application's backend.
//! It creates conversations, adds and removes participants, posts and deletes messages,
//! disconnects users, reads presence and the audit log, with the same effects on live sockets as
//! the clients' own requests, on every node; what it changes goes to the audit log, by its key.
//! Admin keys also read the [`admin`] views: the nodes, a conversation's statistics, health.
//! Every route but the OpenAPI document needs an API key ([`crate::api_keys`]); errors are
//! `{code, message}` with the protocol's codes and their HTTP status.
//! The routes are documented in `openapi.json`, served at `/api/v1/openapi.json`.

mod admin;
mod conversations;
mod messages;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chat_proto::client::ErrorCode;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Gateway;
use crate::api_keys::ApiKeys;
use crate::error::RequestError;

/// The OpenAPI document of the routes below.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Where the admin views are, under `/api/v1`: only admin keys may read them.
const ADMIN_VIEWS: &str = "/admin/";

/// The largest request body: a message with its attachments and metadata fits many times.
const BODY_LIMIT: usize = 256 * 1024;

#[derive(Clone)]
struct Api {
    gateway: Gateway,
    keys: Arc<ApiKeys>,
}

/// Serves the server API on `listener` until `shutdown`; requests under way are finished.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    keys: ApiKeys,
    shutdown: CancellationToken,
) {
    let api = Api {
        gateway,
        keys: Arc::new(keys),
    };
    let served = axum::serve(listener, routes(api))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "the server API stopped");
    }
}

fn routes(api: Api) -> Router {
    Router::new()
        .route("/api/v1/conversations", post(conversations::create))
        .route("/api/v1/conversations/{id}", get(conversations::get))
        .route(
            "/api/v1/conversations/{id}/participants",
            post(conversations::add_participant),
        )
        .route(
            "/api/v1/conversations/{id}/participants/{userId}",
            delete(conversations::remove_participant),
        )
        .route(
            "/api/v1/conversations/{id}/messages",
            post(messages::create),
        )
        .route(
            "/api/v1/conversations/{id}/messages/{messageId}",
            delete(messages::delete),
        )
        .route("/api/v1/conversations/{id}/bans", post(conversations::ban))
        .route(
            "/api/v1/conversations/{id}/bans/{userId}",
            delete(conversations::unban),
        )
        .route(
            "/api/v1/conversations/{id}/online",
            get(conversations::online),
        )
        .route(
            "/api/v1/users/{userId}/conversations",
            get(users::conversations),
        )
        .route("/api/v1/users/{userId}/disconnect", post(users::disconnect))
        .route("/api/v1/presence", get(users::presence))
        .route("/api/v1/audit", get(users::audit))
        .route("/api/v1/admin/nodes", get(admin::nodes))
        .route(
            "/api/v1/admin/conversations/{id}/stats",
            get(admin::conversation_stats),
        )
        .route("/api/v1/admin/health", get(admin::health))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::ProtocolError,
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(api)
}

/// Lets a request through only with one of the keys: `Authorization: Bearer <key>`.
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(holder) = presented.and_then(|key| api.keys.check(key.trim())) else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "a valid API key is required (Authorization: Bearer <key>)",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    };
    let key = holder.name;
    tracing::debug!(key, method = %request.method(), path = %request.uri().path(), "server API");
    let admin_view = request
        .uri()
        .path()
        .strip_prefix("/api/v1")
        .is_some_and(|rest| rest.starts_with(ADMIN_VIEWS));
    if admin_view && !holder.admin {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the admin views need an admin key (--api-admin-keys-file)",
        )
        .into_response();
    }
    let actor = Actor(format!("api:{key}"));
    let mut request = request;
    request.extensions_mut().insert(actor);
    next.run(request).await
}

/// Who acts, for the audit log: `api:<key name>`.
#[derive(Debug, Clone)]
struct Actor(String);

impl Actor {
    /// This key as the actor of an operation.
    fn op(&self) -> crate::operations::Actor<'_> {
        crate::operations::Actor(&self.0)
    }
}

/// A failed request: its HTTP status and `{code, message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl<E: Into<RequestError>> From<E> for ApiError {
    fn from(error: E) -> Self {
        let error = error.into();
        let status = match error.code {
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::ValidationError | ErrorCode::ProtocolError => StatusCode::BAD_REQUEST,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, error.code, error.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

/// A JSON body; what cannot be read is a `VALIDATION_ERROR` that says why.
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                ApiError::new(
                    rejection.status(),
                    ErrorCode::ProtocolError,
                    rejection.body_text(),
                )
            })?;
        parse(&bytes).map(Body)
    }
}

/// A JSON body's value, or a `VALIDATION_ERROR` that says what is wrong with it.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationError,
            format!("invalid body: {error}"),
        )
    })
}

/// Query parameters; what cannot be read is a `VALIDATION_ERROR`.
struct Query<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|query| Query(query.0))
            .map_err(|rejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::ValidationError,
                    rejection.body_text(),
                )
            })
    }
}
