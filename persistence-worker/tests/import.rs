//! `chat-persistence-worker import-sqlite` (the real binary) copies a SQLite store into the CQL
//! store (a real server: see `chat_persistence_worker::testing::cql_server`): afterwards both
//! answer every read the same, over more than one page of each kind, and a second import changes
//! nothing.

use std::collections::HashMap;
use std::time::Duration;

use chat_persistence_worker::store::conformance::every_message;
use chat_persistence_worker::store::sqlite::SqliteStore;
use chat_persistence_worker::store::{Membership, Store};
use chat_persistence_worker::testing::{cql_server, fresh_store, worker_flags};
use chat_proto::testing::run_to_exit;
use chat_proto::v1::conversation_event::Kind;
use chat_proto::v1::{
    ChatMessage, Conversation, ConversationCreated, ConversationEvent, MessageCreated,
    MessageDeleted, MessageEdited, ParticipantBanned, ParticipantRemoved, ParticipantUnbanned,
};

const ROOM: &str = "room-1";
const ODD: &str = "it's ünïcødé 🙂";
/// Messages in `ROOM`, over one page of the import (1,000 rows).
const MESSAGES: u64 = 1_200;

fn event(conversation_id: &str, seq: u64, kind: Kind) -> ConversationEvent {
    ConversationEvent {
        seq,
        conversation_id: conversation_id.into(),
        kind: Some(kind),
    }
}

fn created(conversation_id: &str, seq: u64, participants: &[&str]) -> ConversationEvent {
    let conversation = Conversation {
        id: conversation_id.into(),
        title: format!("title of {conversation_id}"),
        private: true,
        created_by: "alice".into(),
        created_at_ms: 1_700_000_000_000,
        participant_ids: participants.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    };
    let created = ConversationCreated {
        conversation: Some(conversation),
        password_hash: Some("salt$hash".into()),
    };
    event(conversation_id, seq, Kind::ConversationCreated(created))
}

fn message(seq: u64) -> ConversationEvent {
    let message = ChatMessage {
        id: seq,
        conversation_id: ROOM.into(),
        sender_id: "bob".into(),
        r#type: "chat".into(),
        content: format!("m{seq}"),
        created_at_ms: 1_700_000_000_000 + seq as i64,
        ..Default::default()
    };
    event(
        ROOM,
        seq,
        Kind::MessageCreated(MessageCreated {
            message: Some(message),
        }),
    )
}

/// A store with two conversations, 1,200 messages (one edited, one deleted then edited),
/// a member who left, a ban and an ended one, 1,100 read markers, and its committed position.
async fn fill(store: &SqliteStore) -> u64 {
    let mut events = vec![
        created(ROOM, 1, &["alice", "bob", "carol"]),
        created(ODD, 2, &["alice"]),
    ];
    events.extend((3..3 + MESSAGES).map(message));
    let last = 2 + MESSAGES;
    let edit = |seq, message_id| {
        let edit = MessageEdited {
            message_id,
            editor_id: "bob".into(),
            content: "edited".into(),
            edited_at_ms: 1_800_000_000_000,
        };
        event(ROOM, seq, Kind::MessageEdited(edit))
    };
    let delete = MessageDeleted {
        message_id: 6,
        deleter_id: "bob".into(),
        deleted_at_ms: 1_800_000_000_000,
    };
    let left = ParticipantRemoved {
        user_id: "carol".into(),
        at_ms: 1,
    };
    let ban = |user_id: &str| ParticipantBanned {
        user_id: user_id.into(),
        until_ms: 1_900_000_000_000,
        ..ParticipantBanned::default()
    };
    let unban = ParticipantUnbanned {
        user_id: "dave".into(),
        at_ms: 1,
    };
    events.extend([
        edit(last + 1, 5),
        event(ROOM, last + 2, Kind::MessageDeleted(delete)),
        edit(last + 3, 6),
        event(ROOM, last + 4, Kind::ParticipantRemoved(left)),
        event(ROOM, last + 5, Kind::ParticipantBanned(ban("carol"))),
        event(ROOM, last + 6, Kind::ParticipantBanned(ban("dave"))),
        event(ROOM, last + 7, Kind::ParticipantUnbanned(unban)),
    ]);
    let committed = last + 7;
    store.apply(events, Some(committed)).await.unwrap();
    store.mark_read("alice", ODD, 2).await.unwrap();
    for n in 0..1_100 {
        store
            .mark_read(&format!("reader-{n:04}"), ROOM, 3 + n)
            .await
            .unwrap();
    }
    committed
}

/// Everything a store answers about the filled data, in one comparable value.
async fn answers(store: &impl Store) -> String {
    let history = every_message(store, ROOM).await;
    let mut conversations = Vec::new();
    for id in [ROOM, ODD] {
        let stored = store.conversation(id, 100).await.unwrap().unwrap();
        conversations.push((stored.conversation, stored.password_hash));
    }
    let mut memberships: Vec<Membership> = Vec::new();
    for (user, c) in [("carol", ROOM), ("bob", ROOM), ("alice", ODD)] {
        memberships.push(store.membership(user, c).await.unwrap());
    }
    let alices: Vec<String> = store
        .conversations_of("alice", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let readers: Vec<String> = (0..1_100).map(|n| format!("reader-{n:04}")).collect();
    let mut markers: Vec<(String, u64)> = Vec::new();
    for reader in &readers {
        let of: HashMap<String, u64> = store
            .read_markers(reader, &[ROOM.to_owned()])
            .await
            .unwrap();
        markers.extend(of.into_values().map(|m| (reader.clone(), m)));
    }
    let odd = store
        .read_markers("alice", &[ODD.to_owned()])
        .await
        .unwrap();
    let mut bans = Vec::new();
    for user in ["carol", "dave", "erin"] {
        bans.push(store.ban(user, ROOM).await.unwrap());
    }
    assert_eq!(bans, [Some(1_900_000_000_000), Some(1), None]);
    format!(
        "{history:?}\n{conversations:?}\n{memberships:?}\n{alices:?}\n{markers:?}\n{odd:?}\n{bans:?}\n{}",
        store.committed_seq().await.unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_copies_every_row_and_a_second_changes_nothing() {
    let Some(uri) = cql_server("an_import_copies_every_row_and_a_second_changes_nothing") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let committed = fill(&SqliteStore::open(&db).unwrap()).await;
    let (cql, keyspace) = fresh_store(&uri, "import").await;

    let flags = worker_flags(&uri, &keyspace);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["import-sqlite", db.to_str().unwrap()]);
    for run in ["first", "second"] {
        let started = std::time::Instant::now();
        let exited = run_to_exit(
            env!("CARGO_BIN_EXE_chat-persistence-worker"),
            &args,
            Duration::from_secs(120),
        );
        assert_eq!(exited.code, Some(0), "{run} import: {}", exited.stderr);
        println!("{run} import: {:?}", started.elapsed());
        let sqlite = SqliteStore::open(&db).unwrap();
        let expected = answers(&sqlite).await;
        assert!(expected.contains("edited") && expected.ends_with(&committed.to_string()));
        assert_eq!(answers(&cql).await, expected, "after the {run} import");
    }
}
