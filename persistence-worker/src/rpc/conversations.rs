//! Membership, the conversation list and details, read markers, and the membership changes:
//! create, join, leave (each durable, then told to the routers, then announced to the user).

use std::collections::HashMap;

use chat_proto::client::MAX_PARTICIPANTS;
use chat_proto::v1::{self, conversation_event::Kind};
use chat_proto::{bus, subjects, timestamp};
use prost::Message as _;

use super::{Failure, Handlers};
use crate::password;
use crate::store::{self, LISTED_PARTICIPANTS, MAX_READ_PARTICIPANTS, Membership, Store};

/// Most conversations `room:list` returns.
const MAX_LISTED_CONVERSATIONS: u32 = 500;

impl<S: Store> Handlers<S> {
    pub(super) async fn membership(
        &self,
        r: v1::MembershipRequest,
    ) -> Result<v1::MembershipReply, Failure> {
        let membership = self
            .store
            .membership(&r.user_id, &r.conversation_id)
            .await?;
        Ok(v1::MembershipReply {
            exists: membership != Membership::NoConversation,
            member: membership == Membership::Active,
        })
    }

    /// The user's conversations, as many as a reply may carry.
    pub(super) async fn list(
        &self,
        r: v1::ListConversationsRequest,
    ) -> Result<v1::ListConversationsReply, Failure> {
        let mut conversations = self
            .store
            .conversations_of(&r.user_id, MAX_LISTED_CONVERSATIONS)
            .await?;
        let mut size = 0;
        conversations.retain(|c| {
            // With its field's tag and length.
            size += c.encoded_len() + 8;
            size <= self.max_reply_bytes
        });
        Ok(v1::ListConversationsReply { conversations })
    }

    /// A conversation, with the asking user's read marker.
    pub(super) async fn info(
        &self,
        r: v1::ConversationInfoRequest,
    ) -> Result<v1::ConversationInfoReply, Failure> {
        let max_participants = if r.all_participants {
            MAX_READ_PARTICIPANTS
        } else {
            LISTED_PARTICIPANTS
        };
        let stored = self
            .store
            .conversation(&r.conversation_id, max_participants)
            .await?
            .ok_or(Failure::NotFound("no such conversation"))?;
        let mut conversation = stored.conversation;
        // A room of many long ids is cut to what a reply may carry.
        let mut size = 0;
        conversation.participant_ids.retain(|id| {
            size += id.len() + 8;
            size <= self.max_reply_bytes
        });
        if !r.user_id.is_empty() {
            let conversation = std::slice::from_mut(&mut conversation);
            store::add_read_markers(&self.store, &r.user_id, conversation).await?;
        }
        Ok(v1::ConversationInfoReply {
            conversation: Some(conversation),
        })
    }

    pub(super) async fn mark_read(
        &self,
        r: v1::MarkReadRequest,
    ) -> Result<v1::MarkReadReply, Failure> {
        if r.message_id == 0 || i64::try_from(r.message_id).is_err() {
            return Err(Failure::Invalid("no such message id".into()));
        }
        self.store
            .mark_read(&r.user_id, &r.conversation_id, r.message_id)
            .await?;
        Ok(v1::MarkReadReply {})
    }

    pub(super) async fn create(
        &self,
        r: v1::CreateConversationRequest,
    ) -> Result<v1::Conversation, Failure> {
        // The creator first; the server API may create a conversation without one.
        let mut participant_ids: Vec<String> = Some(r.creator_id.clone())
            .filter(|id| !id.is_empty())
            .into_iter()
            .collect();
        for id in r.participant_ids {
            if !participant_ids.contains(&id) {
                participant_ids.push(id);
            }
        }
        if participant_ids.len() > MAX_PARTICIPANTS {
            return Err(Failure::Invalid(format!(
                "at most {MAX_PARTICIPANTS} participants"
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let conversation = v1::Conversation {
            id: id.clone(),
            title: r.title,
            private: r.private,
            created_by: r.creator_id,
            created_at_ms: timestamp::now_ms(),
            num_participants: u32::try_from(participant_ids.len()).unwrap_or(u32::MAX),
            participant_ids,
            last_read_message_id: None,
        };
        let created = v1::ConversationCreated {
            conversation: Some(conversation),
            password_hash: r.password.as_deref().map(password::hash),
        };
        let seq = self
            .record(&id, Kind::ConversationCreated(created.clone()))
            .await?;
        let participant_ids = created
            .conversation
            .map(|c| c.participant_ids)
            .unwrap_or_default();
        // As stored: the participant list it carries is cut for large rooms; every participant
        // is told all the same.
        let conversation = self.load(&id).await?;
        let placement = self.members_changed(&id, &participant_ids, &[]).await;
        for user_id in &participant_ids {
            let joined = v1::ConversationJoined {
                conversation: Some(conversation.clone()),
                created: true,
                seq,
            };
            let kind = v1::user_event::Kind::Joined(joined);
            self.announce(user_id, kind, placement.as_ref()).await;
        }
        Ok(conversation)
    }

    pub(super) async fn join(
        &self,
        r: v1::JoinConversationRequest,
    ) -> Result<v1::Conversation, Failure> {
        let stored = self
            .store
            .conversation(&r.conversation_id, LISTED_PARTICIPANTS)
            .await?
            .ok_or(Failure::NotFound("no such conversation"))?;
        match self
            .store
            .membership(&r.user_id, &r.conversation_id)
            .await?
        {
            Membership::Active => return Ok(stored.conversation),
            Membership::Left | Membership::Never | Membership::NoConversation
                if !r.by_server && self.banned(&r.user_id, &r.conversation_id).await? =>
            {
                return Err(Failure::Forbidden("banned from this conversation"));
            }
            Membership::Left => {}
            Membership::Never | Membership::NoConversation if !r.by_server => {
                if stored.conversation.private {
                    return Err(Failure::Forbidden("this conversation is private"));
                }
                if let Some(hash) = &stored.password_hash {
                    let given = r.password.as_deref().unwrap_or_default();
                    if !password::verify(given, hash) {
                        return Err(Failure::Forbidden("wrong password"));
                    }
                }
            }
            // Added by the application's backend: neither privacy nor a password applies.
            Membership::Never | Membership::NoConversation => {}
        }
        let added = v1::ParticipantAdded {
            user_id: r.user_id.clone(),
            at_ms: timestamp::now_ms(),
        };
        let seq = self
            .record(&r.conversation_id, Kind::ParticipantAdded(added))
            .await?;
        let conversation = self.load(&r.conversation_id).await?;
        let joined = v1::ConversationJoined {
            conversation: Some(conversation.clone()),
            created: false,
            seq,
        };
        let users = [r.user_id];
        let placement = self.members_changed(&conversation.id, &users, &[]).await;
        let kind = v1::user_event::Kind::Joined(joined);
        self.announce(&users[0], kind, placement.as_ref()).await;
        Ok(conversation)
    }

    pub(super) async fn leave(
        &self,
        r: v1::LeaveConversationRequest,
    ) -> Result<v1::Conversation, Failure> {
        if self
            .store
            .membership(&r.user_id, &r.conversation_id)
            .await?
            != Membership::Active
        {
            return Err(Failure::NotFound("not a member of this conversation"));
        }
        let removed = v1::ParticipantRemoved {
            user_id: r.user_id.clone(),
            at_ms: timestamp::now_ms(),
        };
        self.record(&r.conversation_id, Kind::ParticipantRemoved(removed))
            .await?;
        let gone = v1::ConversationRemoved {
            conversation_id: r.conversation_id.clone(),
        };
        let users = [r.user_id];
        let placement = self.members_changed(&r.conversation_id, &[], &users).await;
        let kind = v1::user_event::Kind::Removed(gone);
        self.announce(&users[0], kind, placement.as_ref()).await;
        self.load(&r.conversation_id).await
    }

    /// Tells the routers that `joined` and `left` joined or left a conversation (who hears of
    /// their presence follows): published for every router to follow, and asked of the routers
    /// this worker knows, which say where each user is connected. `None` (announce to every
    /// node) without routers or when they cannot say.
    async fn members_changed(
        &self,
        conversation_id: &str,
        joined: &[String],
        left: &[String],
    ) -> Option<HashMap<String, Vec<String>>> {
        let change = v1::MembersChangedRequest {
            conversation_id: conversation_id.to_owned(),
            joined: joined.to_vec(),
            left: left.to_vec(),
        };
        let published = self
            .client
            .publish(subjects::MEMBERS_CHANGED, change.encode_to_vec().into())
            .await;
        if let Err(error) = published {
            tracing::warn!(%error, "membership change not published to the routers");
        }
        let routers = self.routers.as_ref()?;
        routers
            .members_changed(conversation_id, joined.to_vec(), left.to_vec())
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "no placement; the events go to every node");
                None
            })
    }

    /// Announces `kind` to `user_id` on the nodes of `placement` (every node when `None`). The
    /// change is durable already: an announcement that cannot be published is logged, and the
    /// others go on (the user's sockets get the change at their next connect or resync).
    async fn announce(
        &self,
        user_id: &str,
        kind: v1::user_event::Kind,
        placement: Option<&HashMap<String, Vec<String>>>,
    ) {
        let event = v1::UserEvent {
            user_id: user_id.to_owned(),
            kind: Some(kind),
        };
        let nodes = placement.map(|p| p.get(user_id).map_or(&[][..], Vec::as_slice));
        if let Err(error) = bus::publish_user(&self.client, &event, nodes).await {
            tracing::warn!(%error, user_id, "membership change not announced");
        }
    }
}
