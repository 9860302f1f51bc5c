//! The real `chat-gateway` binary refuses bad options at start: exit 64 (EX_USAGE) with a clear
//! message, before it binds or connects anything, and never a hang.

use std::time::Duration;

use chat_proto::testing::run_to_exit;

/// Far more than a refusal takes; a gateway that got past its checks would wait for NATS.
const DEADLINE: Duration = Duration::from_secs(10);

/// Runs the gateway with a key, ports 0 and a NATS URL nobody listens on (unless `args` names
/// one), plus `args`; asserts exit 64 with `expected` in the message.
fn refused(args: &[&str], expected: &str) {
    let mut argv = vec![
        "--jwt-secret",
        "s3cret",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    if !args.contains(&"--nats-url") {
        argv.extend(["--nats-url", "nats://127.0.0.1:1"]);
    }
    argv.extend_from_slice(args);
    let exited = run_to_exit(env!("CARGO_BIN_EXE_chat-gateway"), &argv, DEADLINE);
    assert_eq!(exited.code, Some(64), "{args:?}: {exited:?}");
    assert!(
        exited.stderr.contains(&format!("error: {expected}")),
        "{args:?}: {exited:?}"
    );
    assert!(!exited.stderr.contains("panicked"), "{args:?}: {exited:?}");
}

#[test]
fn a_malformed_router_url_exits_64_before_connecting() {
    refused(&["--router-urls", "not a url"], "--router-urls");
    refused(
        &["--router-urls", "http://127.0.0.1:7070,localhost:7071"],
        "--router-urls",
    );
}

#[test]
fn zero_durations_and_a_bad_nats_url_exit_64() {
    refused(&["--ping-interval", "0s"], "--ping-interval");
    refused(&["--request-timeout", "0s"], "--request-timeout");
    refused(&["--nats-url", "not a url"], "--nats-url");
}
