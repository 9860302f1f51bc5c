//! The CQL store on a real server: ScyllaDB when `SCYLLA_URI` (host:port) is set, else the
//! Apache Cassandra node that the test command starts (`CASSANDRA_URI`). Each test works in a
//! keyspace of its own and says which server it ran against.

mod common;

use chat_persistence_worker::store::Store as _;
use chat_persistence_worker::store::conformance;
use chat_persistence_worker::store::cql::migrations;
use chat_persistence_worker::testing::{
    REPLICATION, cql_server, cql_tls_ca, fresh_store, keyspace, store_in, worker_flags,
};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

async fn session(uri: &str) -> Session {
    SessionBuilder::new()
        .known_node(uri)
        .build()
        .await
        .expect("the CQL server answers")
}

#[tokio::test]
async fn the_cql_store_conforms() {
    let Some(uri) = cql_server("the_cql_store_conforms") else {
        return;
    };
    let (store, _) = fresh_store(&uri, "conformance").await;
    conformance::check_all(&store).await;
}

#[tokio::test]
async fn migrations_run_once_when_two_workers_start_together() {
    let Some(uri) = cql_server("migrations_run_once_when_two_workers_start_together") else {
        return;
    };
    let keyspace = keyspace("migrations");
    let (a, b) = (session(&uri).await, session(&uri).await);
    let (first, second) = tokio::join!(
        migrations::apply(&a, &keyspace, REPLICATION),
        migrations::apply(&b, &keyspace, REPLICATION),
    );
    first.expect("the first worker migrates");
    second.expect("the second worker migrates or waits");
    // Again, as a restarted worker does: nothing to apply.
    migrations::apply(&a, &keyspace, REPLICATION)
        .await
        .expect("a migrated keyspace migrates again without error");
    let versions = a
        .query_unpaged(
            format!("SELECT version, state FROM {keyspace}.schema_migrations"),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let versions: Vec<(i32, Option<String>)> = versions
        .rows::<(i32, Option<String>)>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let latest = migrations::MIGRATIONS.last().unwrap().0;
    assert!(
        versions.contains(&(latest, Some("applied".into()))),
        "{versions:?}"
    );
}

/// The worker with `--store scylla`: it migrates a fresh keyspace at start, stores what the
/// stream holds, and a restarted worker goes on from the store's committed position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_stores_the_stream_in_the_cql_store() {
    let Some(uri) = cql_server("the_worker_stores_the_stream_in_the_cql_store") else {
        return;
    };
    let nats = chat_proto::testing::NatsServer::start();
    let keyspace = keyspace("worker");
    let config = || {
        use clap::Parser as _;
        let nats_url = nats.url();
        let flags = worker_flags(&uri, &keyspace);
        let args = [
            "worker",
            "--nats-url",
            &nats_url,
            "--admin-listen",
            "127.0.0.1:0",
        ]
        .into_iter()
        .chain(flags.iter().map(String::as_str));
        chat_persistence_worker::Config::try_parse_from(args).unwrap()
    };
    let run = |config| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(chat_persistence_worker::run(config, async {
            let _ = stopped.await;
        }));
        (stop, worker)
    };
    let publish = async |range: std::ops::Range<usize>| {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        common::wait_for_worker(&client).await;
        for i in range {
            let event = common::message(format!("m{i}"));
            chat_proto::bus::publish(&js, &client, event, None)
                .await
                .unwrap();
        }
    };
    let stored = async |count: usize| {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let store = store_in(&uri, &keyspace).await;
            let page = store
                .history("c1", chat_persistence_worker::store::Window::After(0), 100)
                .await
                .unwrap();
            if page.messages.len() >= count || tokio::time::Instant::now() > deadline {
                let committed = store.committed_seq().await.unwrap();
                return (
                    page.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
                    committed,
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let (stop, worker) = run(config());
    publish(0..30).await;
    let (ids, committed) = stored(30).await;
    assert_eq!(ids, (1..=30).collect::<Vec<u64>>());
    assert_eq!(committed, 30);
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();

    let (stop, worker) = run(config());
    publish(30..35).await;
    let (ids, _) = stored(35).await;
    assert_eq!(
        ids,
        (1..=35).collect::<Vec<u64>>(),
        "nothing twice, nothing lost"
    );
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

/// With several writers an edit may be written before the message it edits: the row it leaves is
/// no message (reads skip it, and read on past it), and the message, once written, shows the edit.
#[tokio::test]
async fn an_edit_written_before_its_message_is_skipped_then_applied() {
    let Some(uri) = cql_server("an_edit_written_before_its_message_is_skipped_then_applied") else {
        return;
    };
    use chat_persistence_worker::store::Window;
    use chat_proto::v1::{
        ChatMessage, ConversationEvent, MessageCreated, MessageEdited, conversation_event::Kind,
    };
    let (store, _) = fresh_store(&uri, "early_edits").await;
    let c = "early";
    let event = |seq: u64, kind| ConversationEvent {
        seq,
        conversation_id: c.into(),
        kind: Some(kind),
    };
    let created = |id: u64| {
        let message = ChatMessage {
            id,
            conversation_id: c.into(),
            sender_id: "alice".into(),
            content: format!("m{id}"),
            ..Default::default()
        };
        event(
            id,
            Kind::MessageCreated(MessageCreated {
                message: Some(message),
            }),
        )
    };
    let edited = |seq: u64, id: u64| {
        let edit = MessageEdited {
            message_id: id,
            editor_id: "alice".into(),
            content: format!("edited {id}"),
            edited_at_ms: 1,
        };
        event(seq, Kind::MessageEdited(edit))
    };
    // Edits of messages 1..=5, written before the messages; then messages 10, 11, 12.
    let early: Vec<_> = (1..=5).map(|id| edited(100 + id, id)).collect();
    store.apply(early, None).await.unwrap();
    store
        .apply(vec![created(10), created(11), created(12)], None)
        .await
        .unwrap();
    let page = store.history(c, Window::After(0), 2).await.unwrap();
    let ids: Vec<u64> = page.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, [10, 11], "read on past the rows that are no messages");
    assert!(page.has_more);
    store
        .apply((1..=5).map(created).collect(), None)
        .await
        .unwrap();
    let first = store.message(1).await.unwrap().unwrap();
    assert_eq!(
        first.content, "edited 1",
        "the newer edit wins over the later-written creation"
    );
}

/// With `--scylla-tls-ca` the worker reaches the node over TLS, verified against that CA. A CA
/// that did not sign the node's certificate is refused (so the connection really is TLS: the node
/// also takes plain connections), and so is a CA file that holds no certificate.
#[tokio::test]
async fn tls_verifies_the_node_against_the_ca() {
    use chat_persistence_worker::store::{StoreError, Window};
    use clap::Parser as _;
    let Some(uri) = cql_server("tls_verifies_the_node_against_the_ca") else {
        return;
    };
    let Some(ca) = cql_tls_ca("tls_verifies_the_node_against_the_ca") else {
        return;
    };
    let keyspace = keyspace("tls");
    let config = |ca: &std::path::Path| {
        let flags = worker_flags(&uri, &keyspace);
        let args = ["worker"]
            .into_iter()
            .chain(flags.iter().map(String::as_str))
            .chain(["--scylla-tls-ca", ca.to_str().unwrap()]);
        chat_persistence_worker::Config::try_parse_from(args).unwrap()
    };
    let store = chat_persistence_worker::cql_store(&config(&ca), true)
        .await
        .expect("the node is reached over TLS");
    // As the consumer gets it: at stream position 7.
    let encoded = prost::Message::encode_to_vec(&common::message("over TLS".into()));
    let event = chat_proto::bus::decode_event(&encoded, Some(7)).unwrap();
    store.apply(vec![event], Some(7)).await.unwrap();
    let page = store.history("c1", Window::Newest, 10).await.unwrap();
    let stored: Vec<_> = page
        .messages
        .iter()
        .map(|m| (m.id, m.content.as_str()))
        .collect();
    assert_eq!(stored, [(7, "over TLS")]);

    let other = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/other-ca.pem");
    let refused = chat_persistence_worker::cql_store(&config(&other), false)
        .await
        .err()
        .expect("a node whose certificate another CA signed is refused");
    println!("another CA: {refused}");
    assert!(
        refused.to_string().contains("certificate"),
        "the error says why: {refused}"
    );

    let empty = tempfile::NamedTempFile::new().unwrap();
    match chat_persistence_worker::cql_store(&config(empty.path()), false).await {
        Err(chat_persistence_worker::WorkerError::Store(StoreError::Tls(reason))) => {
            assert!(reason.contains("no certificate"), "{reason}");
        }
        other => panic!("expected a TLS error, got {:?}", other.err()),
    }
}
