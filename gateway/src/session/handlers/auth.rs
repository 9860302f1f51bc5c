//! `auth` (a fresh token on an open session), `resume` (the first request of a connection made
//! with `resume=1`) and `ping`.

use chat_proto::client::{self, AuthData, ResumeData};
use chat_proto::timestamp::now_ms;

use super::Reply;
use crate::error::RequestError;
use crate::session::{Session, token_expiry};

/// The `ping` answer.
pub(super) fn pong() -> Reply {
    Reply::ack(&client::Pong {
        event: "pong",
        timestamp: now_ms(),
    })
}

impl Session {
    pub(super) async fn reauthenticate(&mut self, data: AuthData) -> Result<Reply, RequestError> {
        let shared = &self.gateway.shared;
        let identity = shared.settings.verifier.verify(&data.token)?;
        if identity.user_id != self.identity.user_id {
            return Err(RequestError::forbidden(
                "a connection cannot change its user",
            ));
        }
        self.token_expiry = token_expiry(&identity, shared.settings.config.jwt_leeway);
        self.identity = identity;
        Ok(Reply::ack(&self.connected().await?))
    }

    /// `resume`, the first request of a socket that connected with `resume=1`.
    pub(super) async fn resume(&mut self, data: ResumeData) -> Result<Reply, RequestError> {
        let keys = self.gateway.shared.settings.resume.as_ref();
        let (Some(keys), Some(_)) = (keys, self.resume_wait.take()) else {
            return Err(RequestError::protocol(
                "resume must be the first request of a connection made with resume=1",
            ));
        };
        if let Err(error) = keys.verify(&data.resume_token, &self.identity.user_id) {
            self.release(None);
            return Err(error.into());
        }
        let (report, replay) = Box::pin(self.replay(&data.positions)).await;
        Ok(Reply::Resumed(report, replay))
    }
}
