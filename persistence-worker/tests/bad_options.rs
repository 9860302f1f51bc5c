//! The real `chat-persistence-worker` binary refuses bad options at start: exit 64 (EX_USAGE)
//! with a clear message, before it opens the store or connects to NATS, and never a hang.

use std::time::Duration;

use chat_proto::testing::run_to_exit;

/// Far more than a refusal takes; a worker that got past its checks would wait for NATS.
const DEADLINE: Duration = Duration::from_secs(10);

/// A NATS URL nobody listens on: a worker that goes on to connect waits there.
const NO_NATS: &str = "nats://127.0.0.1:1";

/// Runs the worker with `args` on a new store path (and a NATS URL nobody listens on unless
/// `args` names one); asserts exit 64 with `expected` in the message, and that the store was
/// not even created.
fn refused(args: &[&str], expected: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("chat.db");
    let db = db.to_str().expect("a UTF-8 path");
    let mut argv = vec!["--db-path", db];
    if !args.contains(&"--nats-url") {
        argv.extend(["--nats-url", NO_NATS]);
    }
    argv.extend_from_slice(args);
    let exited = run_to_exit(
        env!("CARGO_BIN_EXE_chat-persistence-worker"),
        &argv,
        DEADLINE,
    );
    assert_eq!(exited.code, Some(64), "{args:?}: {exited:?}");
    assert!(
        exited.stderr.contains(&format!("error: {expected}")),
        "{args:?}: {exited:?}"
    );
    assert!(!exited.stderr.contains("panicked"), "{args:?}: {exited:?}");
    assert!(
        !dir.path().join("chat.db").exists(),
        "{args:?}: the store was opened before the options were checked"
    );
}

#[test]
fn zero_concurrent_requests_exit_64() {
    refused(
        &["--max-concurrent-requests", "0"],
        "--max-concurrent-requests",
    );
}

#[test]
fn a_malformed_router_url_exits_64_before_connecting() {
    refused(&["--router-urls", "not a url"], "--router-urls");
    refused(&["--router-urls", "127.0.0.1:7070"], "--router-urls");
}

#[test]
fn zero_durations_and_a_bad_nats_url_exit_64() {
    refused(&["--router-timeout", "0s"], "--router-timeout");
    refused(&["--dedup-window", "0s"], "--dedup-window");
    refused(&["--nats-url", "not a url"], "--nats-url");
}
