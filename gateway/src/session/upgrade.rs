//! The HTTP upgrade: the only refusals made before it are the protocol's (a wrong path, a
//! forbidden origin, a full node, an address over its connection rate); everything else,
//! a bad token included, is answered after it, over the WebSocket.

use std::net::IpAddr;

use chat_proto::client;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;

use crate::Shared;

/// What the upgrade request carried.
pub(super) struct Upgrade {
    /// The client's address (see `--trusted-proxies`).
    pub(super) client: IpAddr,
    pub(super) token: Option<String>,
    /// `resume=1`: the first request will be `resume`; pushes wait for it.
    pub(super) resume: bool,
}

fn refuse(status: http::StatusCode, reason: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(reason.to_owned()));
    *response.status_mut() = status;
    response
}

/// Checks an upgrade request of a node that is `full` or not, and notes in `upgrade` what it
/// carried.
#[expect(
    clippy::result_large_err,
    reason = "the upgrade callback's error type is tungstenite's"
)]
pub(super) fn check(
    request: &Request,
    mut response: Response,
    shared: &Shared,
    full: bool,
    upgrade: &mut Upgrade,
) -> Result<Response, ErrorResponse> {
    let settings = &shared.settings;
    if request.uri().path() != "/ws" {
        return Err(refuse(
            http::StatusCode::NOT_FOUND,
            "not found; connect to /ws",
        ));
    }
    if let Some(origin) = request.headers().get(http::header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| settings.origins.allows(o));
        if !allowed {
            shared.metrics.refuse_connection("origin");
            return Err(refuse(http::StatusCode::FORBIDDEN, "origin not allowed"));
        }
    }
    if full {
        shared.metrics.refuse_connection("full");
        return Err(refuse(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "this node is full; try another",
        ));
    }
    let forwarded_for = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    upgrade.client = crate::config::client_address(
        upgrade.client,
        forwarded_for,
        &settings.config.trusted_proxies,
    );
    let rate = settings.config.connect_rate_per_ip;
    if let Err(wait) = shared.connect_rates.take(upgrade.client, rate) {
        shared.metrics.refuse_connection("connect_rate");
        let mut refused = refuse(
            http::StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address; retry later",
        );
        let seconds = wait.as_secs().max(1).to_string();
        if let Ok(value) = http::HeaderValue::from_str(&seconds) {
            refused
                .headers_mut()
                .insert(http::header::RETRY_AFTER, value);
        }
        return Err(refused);
    }
    upgrade.token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .or_else(|| {
            // Never logged: the query string holds the token.
            request.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|pair| pair.strip_prefix("token="))
                    .map(str::to_owned)
            })
        });
    upgrade.resume = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair == "resume=1"));
    let offered = request
        .headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    if let Some(offered) = offered
        && offered.split(',').any(|p| p.trim() == client::SUBPROTOCOL)
    {
        response.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(client::SUBPROTOCOL),
        );
    }
    Ok(response)
}
