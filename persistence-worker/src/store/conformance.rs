//! The store conformance suite: one set of checks that every [`Store`] must pass, whatever its
//! database. Each check uses conversations and stream positions of its own, so the whole suite
//! runs on one fresh store (a temporary SQLite file, or a fresh keyspace of a CQL server).

use chat_proto::v1::{
    AuditEvent, AuditQuery, ChatMessage, Conversation, ConversationCreated, ConversationEvent,
    MessageCreated, MessageDeleted, MessageEdited, ParticipantAdded, ParticipantBanned,
    ParticipantRemoved, ParticipantUnbanned, conversation_event::Kind,
};

use super::{LISTED_PARTICIPANTS, Membership, Page, Store, Window};

/// Runs every check on `store`, which must be fresh (nothing applied, nothing committed).
pub async fn check_all<S: Store>(store: &S) {
    replaying_a_batch_changes_nothing(store).await;
    an_older_edit_never_overwrites_a_newer_one(store).await;
    a_deleted_message_is_a_tombstone_that_edits_do_not_revive(store).await;
    history_pages_in_both_directions(store).await;
    a_large_conversation_pages_whole(store).await;
    membership_follows_the_newest_change(store).await;
    ids_full_of_odd_characters_round_trip(store).await;
    read_markers_only_move_forward(store).await;
    a_big_room_lists_its_first_members_and_counts_them_all(store).await;
    a_ban_follows_the_newest_change(store).await;
    the_audit_log_pages_and_filters(store).await;
}

/// Every message of `conversation_id` that `store` holds, in id order, page by page.
pub async fn every_message<S: Store>(store: &S, conversation_id: &str) -> Vec<ChatMessage> {
    let mut messages: Vec<ChatMessage> = Vec::new();
    loop {
        let after = messages.last().map_or(0, |m| m.id);
        let page = store
            .history(conversation_id, Window::After(after), 100)
            .await
            .unwrap();
        if page.messages.is_empty() {
            return messages;
        }
        messages.extend(page.messages);
    }
}

fn event(conversation_id: &str, seq: u64, kind: Kind) -> ConversationEvent {
    ConversationEvent {
        seq,
        conversation_id: conversation_id.into(),
        kind: Some(kind),
    }
}

fn created(conversation_id: &str, seq: u64, content: &str) -> ConversationEvent {
    let message = ChatMessage {
        id: seq,
        conversation_id: conversation_id.into(),
        sender_id: "alice".into(),
        r#type: "chat".into(),
        content: content.into(),
        created_at_ms: 1,
        ..Default::default()
    };
    event(
        conversation_id,
        seq,
        Kind::MessageCreated(MessageCreated {
            message: Some(message),
        }),
    )
}

fn edited(conversation_id: &str, seq: u64, id: u64, content: &str) -> ConversationEvent {
    let edit = MessageEdited {
        message_id: id,
        editor_id: "alice".into(),
        content: content.into(),
        edited_at_ms: 2,
    };
    event(conversation_id, seq, Kind::MessageEdited(edit))
}

fn ids(page: &Page) -> Vec<u64> {
    page.messages.iter().map(|m| m.id).collect()
}

async fn replaying_a_batch_changes_nothing<S: Store>(store: &S) {
    let c = "replay";
    let batch = vec![
        created(c, 1, "one"),
        created(c, 2, "two"),
        edited(c, 3, 1, "uno"),
    ];
    store.apply(batch.clone(), Some(3)).await.unwrap();
    store.apply(batch, Some(3)).await.unwrap();
    let page = store.history(c, Window::Newest, 10).await.unwrap();
    let contents: Vec<_> = page.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["uno", "two"], "a replayed batch is applied once");
    assert_eq!(page.messages[0].id, 1);
    assert_eq!(store.committed_seq().await.unwrap(), 3);
}

async fn an_older_edit_never_overwrites_a_newer_one<S: Store>(store: &S) {
    let c = "reorder";
    store
        .apply(vec![created(c, 101, "a"), edited(c, 105, 101, "new")], None)
        .await
        .unwrap();
    // Redelivered late, out of stream order.
    store
        .apply(vec![edited(c, 104, 101, "old")], None)
        .await
        .unwrap();
    let message = store.message(101).await.unwrap().unwrap();
    assert_eq!(message.content, "new", "an older edit lost to a newer one");
    assert_eq!(message.edited_at_ms, Some(2));
}

async fn a_deleted_message_is_a_tombstone_that_edits_do_not_revive<S: Store>(store: &S) {
    let c = "tombstone";
    let delete = MessageDeleted {
        message_id: 201,
        deleter_id: "alice".into(),
        deleted_at_ms: 3,
    };
    let events = vec![
        created(c, 201, "a"),
        event(c, 202, Kind::MessageDeleted(delete)),
        edited(c, 203, 201, "b"),
    ];
    store.apply(events, None).await.unwrap();
    let message = store.message(201).await.unwrap().unwrap();
    assert!(message.deleted);
    assert_eq!(message.content, "", "a tombstone has no content");
    let page = store.history(c, Window::Newest, 10).await.unwrap();
    assert_eq!(ids(&page), [201]);
    assert!(page.messages[0].deleted);
}

async fn history_pages_in_both_directions<S: Store>(store: &S) {
    let c = "pages";
    let events = (301..=310).map(|i| created(c, i, &i.to_string())).collect();
    store.apply(events, None).await.unwrap();
    let after = store.history(c, Window::After(307), 10).await.unwrap();
    assert!(!after.has_more);
    assert_eq!(ids(&after), [308, 309, 310]);
    let before = store.history(c, Window::Before(305), 2).await.unwrap();
    assert!(before.has_more);
    assert_eq!(ids(&before), [303, 304]);
    let newest = store.history(c, Window::Newest, 3).await.unwrap();
    assert!(newest.has_more);
    assert_eq!(ids(&newest), [308, 309, 310]);
    let first = store.history(c, Window::After(0), 3).await.unwrap();
    assert!(first.has_more);
    assert_eq!(ids(&first), [301, 302, 303]);
}

/// More messages than a partition of a bucketed store holds, sent while other conversations
/// send too (ids far apart): paging forward and backward meets every message once, in order.
async fn a_large_conversation_pages_whole<S: Store>(store: &S) {
    let c = "large";
    let ids_sent: Vec<u64> = (0..2_500).map(|i| 10_000 + i * 37).collect();
    for chunk in ids_sent.chunks(500) {
        let events = chunk.iter().map(|&id| created(c, id, "x")).collect();
        store.apply(events, None).await.unwrap();
    }
    let mut forward = Vec::new();
    let mut after = 0;
    loop {
        let page = store.history(c, Window::After(after), 100).await.unwrap();
        forward.extend(ids(&page));
        match page.messages.last() {
            Some(last) if page.has_more => after = last.id,
            _ => break,
        }
    }
    assert_eq!(forward, ids_sent, "paging forward");
    let mut backward = Vec::new();
    let mut page = store.history(c, Window::Newest, 100).await.unwrap();
    loop {
        backward.splice(0..0, ids(&page));
        let (Some(first), true) = (page.messages.first(), page.has_more) else {
            break;
        };
        page = store
            .history(c, Window::Before(first.id), 100)
            .await
            .unwrap();
    }
    assert_eq!(backward, ids_sent, "paging backward");
}

async fn membership_follows_the_newest_change<S: Store>(store: &S) {
    let c = "members";
    let conversation = Conversation {
        id: c.into(),
        title: "t".into(),
        created_by: "alice".into(),
        participant_ids: vec!["alice".into(), "bob".into()],
        ..Default::default()
    };
    let create = event(
        c,
        401,
        Kind::ConversationCreated(ConversationCreated {
            conversation: Some(conversation),
            password_hash: None,
        }),
    );
    let removed = |seq| {
        let user_id = "bob".into();
        event(
            c,
            seq,
            Kind::ParticipantRemoved(ParticipantRemoved { user_id, at_ms: 0 }),
        )
    };
    let added = |seq| {
        let user_id = "bob".into();
        event(
            c,
            seq,
            Kind::ParticipantAdded(ParticipantAdded { user_id, at_ms: 0 }),
        )
    };
    store
        .apply(vec![create, removed(402), added(404)], None)
        .await
        .unwrap();
    // An older removal, redelivered late, does not undo the newer join.
    store.apply(vec![removed(403)], None).await.unwrap();
    assert_eq!(
        store.membership("bob", c).await.unwrap(),
        Membership::Active
    );
    assert_eq!(
        store.membership("carol", c).await.unwrap(),
        Membership::Never
    );
    assert_eq!(
        store.membership("bob", "nowhere").await.unwrap(),
        Membership::NoConversation
    );
    let info = store
        .conversation(c, LISTED_PARTICIPANTS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.conversation.num_participants, 2);
    assert_eq!(info.conversation.participant_ids, ["alice", "bob"]);
    let bobs: Vec<_> = store.conversations_of("bob", 10).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].id, c);
    assert_eq!(bobs[0].last_read_message_id, None, "nothing read yet");
    store.mark_read("bob", c, 402).await.unwrap();
    store.mark_read("alice", c, 404).await.unwrap();
    let bobs = store.conversations_of("bob", 10).await.unwrap();
    assert_eq!(bobs[0].last_read_message_id, Some(402), "bob's own marker");
    store.apply(vec![removed(405)], None).await.unwrap();
    assert_eq!(store.membership("bob", c).await.unwrap(), Membership::Left);
    assert!(store.conversations_of("bob", 10).await.unwrap().is_empty());
}

async fn ids_full_of_odd_characters_round_trip<S: Store>(store: &S) {
    let odd = [
        "it's \"quoted\"; DROP TABLE messages; --",
        "ünïcødé ✓ 会話 🙂",
        "dots.stars*and>wildcards %_ \\ back\\slash",
        &"x".repeat(128),
    ];
    for (i, c) in odd.iter().enumerate() {
        let seq = 500 + i as u64;
        store.apply(vec![created(c, seq, c)], None).await.unwrap();
        let page = store.history(c, Window::Newest, 10).await.unwrap();
        assert_eq!(ids(&page), [seq], "{c:?}");
        let message = store.message(seq).await.unwrap().unwrap();
        assert_eq!(
            (message.conversation_id.as_str(), message.content.as_str()),
            (*c, *c)
        );
    }
}

async fn read_markers_only_move_forward<S: Store>(store: &S) {
    let odd = "read: it's ünïcødé 🙂";
    let rooms = ["read-1".to_owned(), "read-2".to_owned(), odd.to_owned()];
    assert!(store.read_markers("bob", &rooms).await.unwrap().is_empty());
    store.mark_read("bob", "read-1", 40).await.unwrap();
    store.mark_read("bob", "read-1", 30).await.unwrap(); // Late and older: ignored.
    store.mark_read("bob", odd, 7).await.unwrap();
    store.mark_read("carol", "read-2", 99).await.unwrap();
    let bobs = store.read_markers("bob", &rooms).await.unwrap();
    let expected = [("read-1".to_owned(), 40), (odd.to_owned(), 7)];
    assert_eq!(
        bobs,
        expected.into_iter().collect(),
        "each user's own markers"
    );
    store.mark_read("bob", "read-1", 41).await.unwrap();
    let one = store.read_markers("bob", &rooms[..1]).await.unwrap();
    assert_eq!(one.get("read-1"), Some(&41));
    // Many conversations at once (a user's whole list).
    let many: Vec<String> = (0..250).map(|i| format!("read-many-{i}")).collect();
    for (i, c) in many.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        store.mark_read("dave", c, i as u64 + 1).await.unwrap();
    }
    let daves = store.read_markers("dave", &many).await.unwrap();
    assert_eq!(daves.len(), 84);
    assert_eq!(daves.get("read-many-249"), Some(&250));
}

async fn a_big_room_lists_its_first_members_and_counts_them_all<S: Store>(store: &S) {
    let c = "big-room";
    let users: Vec<String> = (0..1_000).map(|n| format!("user-{n:04}")).collect();
    let conversation = Conversation {
        id: c.into(),
        title: "everyone".into(),
        created_by: users[0].clone(),
        participant_ids: users.clone(),
        ..Default::default()
    };
    let create = event(
        c,
        700,
        Kind::ConversationCreated(ConversationCreated {
            conversation: Some(conversation),
            password_hash: None,
        }),
    );
    // Every tenth of the first 200 left: the first page must skip them.
    let left = (0..200).step_by(10).map(|n| {
        let user_id = users[n].clone();
        event(
            c,
            701 + n as u64,
            Kind::ParticipantRemoved(ParticipantRemoved { user_id, at_ms: 0 }),
        )
    });
    store
        .apply(std::iter::once(create).chain(left).collect(), None)
        .await
        .unwrap();
    let stayed: Vec<String> = users
        .iter()
        .enumerate()
        .filter(|(n, _)| *n >= 200 || n % 10 != 0)
        .map(|(_, u)| u.clone())
        .collect();
    let listed = store
        .conversation(c, LISTED_PARTICIPANTS)
        .await
        .unwrap()
        .unwrap()
        .conversation;
    assert_eq!(listed.num_participants, 980);
    assert_eq!(
        listed.participant_ids,
        stayed[..LISTED_PARTICIPANTS as usize]
    );
    let all = store.conversation(c, 10_000).await.unwrap().unwrap();
    assert_eq!(all.conversation.participant_ids, stayed);
}

async fn a_ban_follows_the_newest_change<S: Store>(store: &S) {
    let c = "conformance-bans";
    let banned = |seq, until_ms| {
        let ban = ParticipantBanned {
            user_id: "mallory".into(),
            until_ms,
            reason: "spam".into(),
            banned_by: "sam".into(),
            at_ms: 0,
        };
        event(c, seq, Kind::ParticipantBanned(ban))
    };
    let unbanned = |seq| {
        let user_id = "mallory".into();
        event(
            c,
            seq,
            Kind::ParticipantUnbanned(ParticipantUnbanned { user_id, at_ms: 0 }),
        )
    };
    assert_eq!(store.ban("mallory", c).await.unwrap(), None);
    store.apply(vec![banned(601, 0)], None).await.unwrap();
    assert_eq!(
        store.ban("mallory", c).await.unwrap(),
        Some(0),
        "until unbanned"
    );
    assert_eq!(
        store.ban("alice", c).await.unwrap(),
        None,
        "others are not banned"
    );
    store
        .apply(vec![banned(603, 1_900_000_000_000)], None)
        .await
        .unwrap();
    assert_eq!(
        store.ban("mallory", c).await.unwrap(),
        Some(1_900_000_000_000)
    );
    // An older ban, redelivered late, does not replace the newer one; an unban ends it in the
    // past, and an older ban cannot bring it back.
    store.apply(vec![banned(602, 0)], None).await.unwrap();
    assert_eq!(
        store.ban("mallory", c).await.unwrap(),
        Some(1_900_000_000_000)
    );
    store.apply(vec![unbanned(605)], None).await.unwrap();
    store.apply(vec![banned(604, 0)], None).await.unwrap();
    assert_eq!(
        store.ban("mallory", c).await.unwrap(),
        Some(1),
        "ended long ago"
    );
}

async fn the_audit_log_pages_and_filters<S: Store>(store: &S) {
    let keep = std::time::Duration::from_secs(3600);
    let record = |seq: u64| AuditEvent {
        seq,
        at_ms: 1_000 + seq as i64,
        kind: "message.create".into(),
        actor: format!("user-{}", seq % 3),
        user_id: format!("user-{}", seq % 5),
        conversation_id: format!("room-{}", seq % 2),
        message_id: seq,
        ..AuditEvent::default()
    };
    let query = |conversation_id: &str, user_id: &str, after, limit| AuditQuery {
        conversation_id: conversation_id.into(),
        user_id: user_id.into(),
        after,
        limit,
    };
    store
        .append_audit((1..=40).map(record).collect(), keep)
        .await
        .unwrap();
    // Stored twice (a redelivery): kept once.
    store
        .append_audit((30..=40).map(record).collect(), keep)
        .await
        .unwrap();
    let all = store.audit(query("", "", 0, 1_000), 1).await.unwrap();
    let seqs: Vec<u64> = all.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    assert_eq!(all.next, 0, "the end");
    assert_eq!(all.events[6], record(7), "a record round-trips");
    // Pages: `next` goes on where the page stopped.
    let first = store.audit(query("", "", 0, 15), 1).await.unwrap();
    assert_eq!(first.events.len(), 15);
    assert_eq!(first.next, 15);
    let second = store.audit(query("", "", first.next, 15), 1).await.unwrap();
    assert_eq!(second.events[0].seq, 16);
    // Filters: a conversation, a user (as the actor or the user concerned), both.
    let room = store.audit(query("room-1", "", 0, 1_000), 1).await.unwrap();
    assert!(room.events.iter().all(|e| e.conversation_id == "room-1"));
    assert_eq!(room.events.len(), 20);
    let user = store.audit(query("", "user-0", 0, 1_000), 1).await.unwrap();
    let expected = (1..=40u64).filter(|s| s % 3 == 0 || s % 5 == 0).count();
    assert_eq!(user.events.len(), expected);
    let both = store
        .audit(query("room-0", "user-0", 0, 1_000), 1)
        .await
        .unwrap();
    assert!(
        both.events.iter().all(
            |e| e.conversation_id == "room-0" && (e.actor == "user-0" || e.user_id == "user-0")
        )
    );
    // Nothing before the stream's first record.
    let later = store.audit(query("", "", 0, 1_000), 31).await.unwrap();
    assert_eq!(later.events.first().map(|e| e.seq), Some(31));
}
