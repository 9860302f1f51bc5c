//! Roles and permissions with real sockets: each default, per role (an employee without a `role`
//! claim, a guest, a supervisor, a role the table does not know), and a permissions file that
//! replaces one role and adds another. Refusals are `FORBIDDEN` naming the missing permission.

mod common;

use common::{Client, Cluster, ClusterClients, create_public_room, create_room};
use serde_json::{Value, json};

/// A refusal's message.
async fn refused(client: &mut Client, event: &str, data: Value) -> String {
    let answer = client.request(event, data).await;
    assert_eq!(answer["data"]["code"], "FORBIDDEN", "{event}: {answer}");
    answer["data"]["message"].as_str().unwrap().to_owned()
}

fn with_attachment(room: &str) -> Value {
    json!({"conversationId": room, "content": "see file",
        "attachments": [{"externalFileId": "f-1", "label": "plan.pdf"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_cannot_create_or_join_public_conversations_but_send_attachments() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let lobby = create_public_room(&mut alice).await;
    let mut gus = Client::connect_as(&cluster.url(1), "gus", "guest").await;
    let message = refused(
        &mut gus,
        "room:create",
        json!({"participantIds": ["alice"]}),
    )
    .await;
    assert_eq!(
        message,
        "the role guest lacks the permission createConversations"
    );
    let message = refused(&mut gus, "room:join", json!({"conversationId": lobby})).await;
    assert_eq!(message, "the role guest lacks the permission joinPublic");
    // Added by a member, a guest is in, and may send attachments there.
    let room = create_room(&mut alice, &["gus"]).await;
    gus.expect("conversation:new").await;
    gus.ok("message:send", with_attachment(&room)).await;
    let message = refused(
        &mut gus,
        "participant:add",
        json!({"conversationId": room, "userId": "hal"}),
    )
    .await;
    assert_eq!(
        message,
        "the role guest lacks the permission manageParticipants"
    );
    // A role the table does not know gets a guest's permissions.
    let mut ivy = Client::connect_as(&cluster.url(0), "ivy", "intern").await;
    let message = refused(&mut ivy, "room:create", json!({"participantIds": []})).await;
    assert_eq!(
        message,
        "the role intern lacks the permission createConversations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn employees_manage_participants_but_not_others_messages() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut bob = cluster.client(1, "bob").await;
    let mut carol = cluster.client(1, "carol").await;
    let lobby = create_public_room(&mut alice).await;
    bob.ok("room:join", json!({"conversationId": lobby})).await;
    assert_eq!(alice.expect("participant:added").await["userId"], "bob");
    let room = create_room(&mut alice, &["bob"]).await;
    bob.expect("conversation:new").await;

    // A member adds and removes others.
    let added = bob
        .ok(
            "participant:add",
            json!({"conversationId": room, "userId": "carol"}),
        )
        .await;
    assert_eq!(added["conversation"]["numParticipants"], 3);
    assert_eq!(
        carol.expect("conversation:joined").await["conversation"]["id"],
        room.as_str()
    );
    assert_eq!(alice.expect("participant:added").await["userId"], "carol");
    bob.ok(
        "participant:remove",
        json!({"conversationId": room, "userId": "carol"}),
    )
    .await;
    assert_eq!(
        carol.expect("conversation:removed").await["conversationId"],
        room.as_str()
    );
    // Not in a conversation one is not a member of.
    let answer = carol
        .request(
            "participant:add",
            json!({"conversationId": room, "userId": "carol"}),
        )
        .await;
    assert_eq!(answer["data"]["code"], "FORBIDDEN");

    let sent = alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "mine"}),
        )
        .await;
    let id = sent["message"]["id"].as_u64().unwrap();
    let message = refused(&mut bob, "message:delete", json!({"messageId": id})).await;
    assert!(message.contains("moderateMessages"), "{message}");
    refused(
        &mut bob,
        "message:edit",
        json!({"messageId": id, "content": "yours"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisors_edit_and_delete_others_messages_in_their_conversations() {
    let cluster = Cluster::start().await;
    let mut alice = cluster.client(0, "alice").await;
    let mut sam = Client::connect_as(&cluster.url(1), "sam", "supervisor").await;
    let room = create_room(&mut alice, &["sam"]).await;
    sam.expect("conversation:new").await;
    let elsewhere = create_room(&mut alice, &["bob"]).await;
    let mut ids = Vec::new();
    for (conversation, content) in [(&room, "one"), (&room, "two"), (&elsewhere, "three")] {
        let sent = alice
            .ok(
                "message:send",
                json!({"conversationId": conversation, "content": content}),
            )
            .await;
        ids.push(sent["message"]["id"].as_u64().unwrap());
    }
    sam.ok(
        "message:edit",
        json!({"messageId": ids[0], "content": "[edited by a supervisor]"}),
    )
    .await;
    assert_eq!(
        alice.expect("message:updated").await["content"],
        "[edited by a supervisor]"
    );
    sam.ok("message:delete", json!({"messageId": ids[1]})).await;
    assert_eq!(alice.expect("message:deleted").await["messageId"], ids[1]);
    // Not in a conversation the supervisor is not a member of.
    let answer = sam
        .request("message:delete", json!({"messageId": ids[2]}))
        .await;
    assert_eq!(answer["data"]["code"], "FORBIDDEN", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permissions_file_replaces_a_role_and_adds_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("permissions.json");
    std::fs::write(
        &file,
        r#"{"guest": [], "moderator": ["moderateMessages", "createConversations"]}"#,
    )
    .unwrap();
    let cluster = Cluster::start_with(&["--permissions-file", file.to_str().unwrap()]).await;
    let mut alice = cluster.client(0, "alice").await;
    let mut gus = Client::connect_as(&cluster.url(0), "gus", "guest").await;
    let mut mo = Client::connect_as(&cluster.url(1), "mo", "moderator").await;
    let room = create_room(&mut alice, &["gus", "mo"]).await;
    gus.expect("conversation:new").await;
    let message = refused(&mut gus, "message:send", with_attachment(&room)).await;
    assert_eq!(
        message,
        "the role guest lacks the permission sendAttachments"
    );
    let sent = alice
        .ok(
            "message:send",
            json!({"conversationId": room, "content": "x"}),
        )
        .await;
    mo.expect("conversation:new").await;
    mo.ok(
        "message:delete",
        json!({"messageId": sent["message"]["id"]}),
    )
    .await;
    mo.ok("room:create", json!({"participantIds": []})).await;
    let message = refused(&mut mo, "message:send", with_attachment(&room)).await;
    assert_eq!(
        message,
        "the role moderator lacks the permission sendAttachments"
    );
}
