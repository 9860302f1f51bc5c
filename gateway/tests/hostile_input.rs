//! Property test of the frame decoder and the validation of what clients send (the same code the
//! fuzz target in `gateway/fuzz` drives): whatever the text, it is a request or a clear refusal,
//! never a panic, and what is accepted is within the limits.

use chat_gateway::request::{Body, decode};
use chat_gateway::validation::{self, ContentLimits};
use proptest::prelude::*;
use serde_json::{Value, json};

const MAX_BYTES: usize = 64 * 1024;

fn limits() -> ContentLimits {
    ContentLimits {
        max_content_chars: 5_000,
        max_attachments: 10,
        max_metadata_bytes: 4 * 1024,
        max_metadata_depth: 8,
    }
}

/// Any JSON value, nested a few levels, with hostile strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[\\u{0}-\\u{1f}<>\"'&{}$*.>]{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::hash_map("[a-zA-Z]{1,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Envelopes with the real field names and any values: the shapes a client gets wrong.
fn envelope() -> impl Strategy<Value = String> {
    let event = prop_oneof![
        Just(json!("message:send")),
        Just(json!("room:create")),
        Just(json!("ping")),
        json_value(),
    ];
    let data = prop_oneof![
        json_value(),
        (json_value(), json_value(), json_value()).prop_map(|(c, id, meta)| json!({
            "conversationId": id, "content": c, "metadata": meta,
        })),
        (json_value(), json_value()).prop_map(|(title, ids)| json!({
            "title": title, "participantIds": ids,
        })),
    ];
    (event, data, json_value(), prop::option::of(json_value())).prop_map(
        |(event, data, request_id, version)| {
            let mut frame = json!({ "event": event, "data": data, "requestId": request_id });
            if let Some(version) = version {
                frame["version"] = version;
            }
            frame.to_string()
        },
    )
}

/// Decodes and, for the events that carry content, validates as the server does; panics are
/// the failure.
fn handle(text: &str) -> Result<(), String> {
    let request = decode(text, MAX_BYTES).map_err(|refusal| {
        let frame: Value = serde_json::from_str(&refusal.to_frame()).expect("refusals are JSON");
        assert_eq!(frame["event"], "error");
        let code = frame["data"]["code"].as_str().unwrap_or_default();
        assert!(
            ["PROTOCOL_ERROR", "VALIDATION_ERROR"].contains(&code),
            "{frame}"
        );
        if let Some(event) = frame["data"]["originalEvent"].as_str() {
            assert!(event.chars().count() <= 64, "{frame}");
        }
        frame["data"]["message"].to_string()
    })?;
    let checked = match request.body {
        Body::Send(data) => validation::new_message(data, "u", &limits(), validation::CLIENT_TYPES)
            .map(|message| {
                assert!(message.content.chars().count() <= 5_000);
                assert!(message.metadata_json.len() <= 4 * 1024);
                assert!(message.attachments.len() <= 10);
            }),
        Body::Create(data) => validation::new_conversation(data, "u")
            .map(|create| assert!(create.title.chars().count() <= 255)),
        _ => Ok(()),
    };
    checked.map_err(|error| error.message.into_owned())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_text_is_a_request_or_a_clear_refusal(text in any::<String>()) {
        let _ = handle(&text);
    }

    #[test]
    fn any_envelope_is_a_request_or_a_clear_refusal(text in envelope()) {
        let _ = handle(&text);
    }

    #[test]
    fn a_well_formed_request_keeps_its_id_and_event(
        id in "[a-z0-9-]{0,64}",
        event in prop::sample::select(vec!["ping", "room:list", "room:info", "typing:start"]),
    ) {
        let data = json!({ "conversationId": "c", "x": 1 });
        let text = json!({ "event": event, "requestId": id, "data": data }).to_string();
        let request = decode(&text, MAX_BYTES).unwrap();
        prop_assert_eq!(request.request_id.as_deref(), Some(id.as_str()));
        prop_assert_eq!(request.body.name(), event);
    }

    #[test]
    fn an_unknown_event_is_refused_with_its_id(id in "[a-z0-9-]{0,64}", event in "[a-z]{1,30}") {
        let text = json!({ "event": event, "requestId": id }).to_string();
        let refusal = decode(&text, MAX_BYTES).unwrap_err();
        prop_assert_eq!(refusal.request_id.as_deref(), Some(id.as_str()));
        prop_assert_eq!(refusal.event.as_deref(), Some(event.as_str()));
        prop_assert!(refusal.error.message.contains("unknown event"));
    }
}

#[test]
fn oversized_and_deeply_nested_frames_are_refused_not_fatal() {
    let big = format!(r#"{{"event":"ping","data":"{}"}}"#, "a".repeat(MAX_BYTES));
    assert!(handle(&big).unwrap_err().contains("larger than"));
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    assert!(handle(&deep).is_err());
    let deep_metadata = format!(
        r#"{{"event":"message:send","data":{{"conversationId":"c","content":"x","metadata":{}1{}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert!(
        handle(&deep_metadata).unwrap_err().contains("metadata"),
        "depth limit"
    );
}
