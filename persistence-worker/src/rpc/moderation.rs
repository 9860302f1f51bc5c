//! Bans: a banned user is removed and cannot join again until the ban ends or is lifted.

use chat_proto::timestamp;
use chat_proto::v1::{self, conversation_event::Kind};

use super::{Failure, Handlers};
use crate::store::{Membership, Store};

impl<S: Store> Handlers<S> {
    /// Bans a user (recorded first, so that no join slips in between) and removes them if they
    /// are a member: their sockets leave at once, the others get `participant:removed`.
    pub(super) async fn ban(&self, r: v1::BanRequest) -> Result<v1::BanReply, Failure> {
        self.load(&r.conversation_id).await?;
        if r.duration_ms < 0 {
            return Err(Failure::Invalid("durationSecs must not be negative".into()));
        }
        let now = timestamp::now_ms();
        let banned = v1::ParticipantBanned {
            user_id: r.user_id.clone(),
            until_ms: if r.duration_ms == 0 {
                0
            } else {
                now.saturating_add(r.duration_ms)
            },
            reason: r.reason,
            banned_by: r.banned_by,
            at_ms: now,
        };
        self.record(&r.conversation_id, Kind::ParticipantBanned(banned))
            .await?;
        let member = self
            .store
            .membership(&r.user_id, &r.conversation_id)
            .await?;
        if member == Membership::Active {
            let leave = v1::LeaveConversationRequest {
                user_id: r.user_id,
                conversation_id: r.conversation_id,
            };
            self.leave(leave).await?;
        }
        Ok(v1::BanReply {})
    }

    /// Ends a ban (recorded, so that every worker and reader sees it).
    pub(super) async fn unban(&self, r: v1::UnbanRequest) -> Result<v1::BanReply, Failure> {
        self.load(&r.conversation_id).await?;
        let unbanned = v1::ParticipantUnbanned {
            user_id: r.user_id,
            at_ms: timestamp::now_ms(),
        };
        self.record(&r.conversation_id, Kind::ParticipantUnbanned(unbanned))
            .await?;
        Ok(v1::BanReply {})
    }

    /// Whether a ban keeps `user_id` out of the conversation now.
    pub(super) async fn banned(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<bool, Failure> {
        Ok(match self.store.ban(user_id, conversation_id).await? {
            Some(0) => true,
            Some(until_ms) => until_ms > timestamp::now_ms(),
            None => false,
        })
    }
}
