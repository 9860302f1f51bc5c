//! `presence:update` and `presence:query`, answered by the routers (UNAVAILABLE without one).

use super::Reply;
use crate::error::RequestError;
use crate::presence;
use crate::request::{StatusData, UsersData};
use crate::session::Session;

impl Session {
    /// Sets the user's status for all their sessions.
    pub(super) fn update_presence(&self, data: &StatusData) -> Result<Reply, RequestError> {
        let router = self.gateway.shared.router()?;
        let status = presence::parse_status(&data.status).ok_or_else(|| {
            RequestError::invalid("status must be one of online, away, busy, invisible")
        })?;
        router.set_status(&self.identity.user_id, status);
        Ok(Reply::done())
    }

    /// What others see of each user named.
    pub(super) async fn query_presence(&self, data: UsersData) -> Result<Reply, RequestError> {
        let statuses = presence::statuses(&self.gateway.shared, data.user_ids).await?;
        Ok(Reply::ack(&statuses))
    }
}
