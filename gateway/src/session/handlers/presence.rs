//! `presence:update` and `presence:query`, answered by the routers (UNAVAILABLE without one).

use serde_json::json;

use super::Reply;
use crate::error::RequestError;
use crate::presence::{self, MAX_QUERIED_USERS};
use crate::request::{StatusData, UsersData};
use crate::router::RouterLink;
use crate::session::Session;
use crate::validation;

impl Session {
    /// The routers, or why presence cannot be answered.
    pub(super) fn router(&self) -> Result<&RouterLink, RequestError> {
        self.gateway.shared.router.as_ref().ok_or_else(|| {
            RequestError::new(
                chat_proto::client::ErrorCode::Unavailable,
                "presence is not tracked by this deployment (no router)",
            )
        })
    }

    /// Sets the user's status for all their sessions.
    pub(super) fn update_presence(&self, data: &StatusData) -> Result<Reply, RequestError> {
        let router = self.router()?;
        let status = presence::parse_status(&data.status).ok_or_else(|| {
            RequestError::invalid("status must be one of online, away, busy, invisible")
        })?;
        router.set_status(&self.identity.user_id, status);
        Ok(Reply::Ack(json!({})))
    }

    /// What others see of each user named.
    pub(super) async fn query_presence(&self, data: UsersData) -> Result<Reply, RequestError> {
        let router = self.router()?;
        if data.user_ids.len() > MAX_QUERIED_USERS {
            return Err(RequestError::invalid(format!(
                "at most {MAX_QUERIED_USERS} userIds"
            )));
        }
        for user_id in &data.user_ids {
            validation::user_id(user_id)?;
        }
        let statuses = router.routers().presence(data.user_ids).await?;
        let statuses: serde_json::Map<String, serde_json::Value> = statuses
            .into_iter()
            .map(|(user_id, status)| (user_id, presence::status_name(status).into()))
            .collect();
        Ok(Reply::Ack(json!({ "statuses": statuses })))
    }
}
