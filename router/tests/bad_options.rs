//! The real `chat-router` binary refuses bad options at start: exit 64 (EX_USAGE) with a clear
//! message, before it binds or connects anything, and never a panic.

use std::time::Duration;

use chat_proto::testing::run_to_exit;

/// Far more than a refusal takes; a binary that got past its checks would hang on NATS.
const DEADLINE: Duration = Duration::from_secs(10);

/// A NATS URL nobody listens on: a router that goes on to connect waits there.
const NO_NATS: &str = "nats://127.0.0.1:1";

#[test]
fn a_zero_presence_window_exits_64_without_a_panic() {
    let exited = run_to_exit(
        env!("CARGO_BIN_EXE_chat-router"),
        &[
            "--presence-window",
            "0s",
            "--nats-url",
            NO_NATS,
            "--listen",
            "127.0.0.1:0",
        ],
        DEADLINE,
    );
    assert_eq!(exited.code, Some(64), "{exited:?}");
    assert!(
        exited.stderr.contains("error: --presence-window"),
        "{exited:?}"
    );
    assert!(!exited.stderr.contains("panicked"), "{exited:?}");
}

#[test]
fn a_zero_lease_and_a_bad_nats_url_exit_64() {
    for args in [
        ["--lease", "0s"],
        ["--nats-url", "not a url"],
        ["--nats-url", "http://127.0.0.1:4222"],
    ] {
        let exited = run_to_exit(
            env!("CARGO_BIN_EXE_chat-router"),
            &[&args[..], &["--listen", "127.0.0.1:0"]].concat(),
            DEADLINE,
        );
        assert_eq!(exited.code, Some(64), "{args:?}: {exited:?}");
        assert!(
            exited.stderr.contains(&format!("error: {}", args[0])),
            "{args:?}: {exited:?}"
        );
    }
}
