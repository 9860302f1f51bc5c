//! Placement throughput: how fast one router registers, looks up and closes sessions, in memory
//! under its lock as the service does. `cargo bench -p chat-router` prints operations a second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chat_proto::v1::{self, Status};
use chat_router::placement::Placement;

const USERS: usize = 200_000;
const NODES: usize = 20;

fn session(user: usize, session: usize) -> v1::Session {
    v1::Session {
        user_id: format!("user-{user}"),
        session_id: format!("s-{user}-{session}"),
        status: Status::Online.into(),
        conversation_ids: Vec::new(),
    }
}

fn report(what: &str, count: usize, took: Duration) {
    let rate = count as f64 / took.as_secs_f64();
    println!(
        "{what:<34} {count:>9} in {:>8.1} ms: {:>11.0}/s ({:.0} ns each)",
        took.as_secs_f64() * 1e3,
        rate,
        1e9 / rate
    );
}

fn main() {
    let mut placement = Placement::new(5, Duration::ZERO);
    let later = std::time::Instant::now() + Duration::from_secs(3600);
    let nodes: Vec<String> = (0..NODES).map(|n| format!("node-{n}")).collect();
    for (generation, node) in nodes.iter().enumerate() {
        placement.hello(node, generation as u64, later, Vec::new(), Vec::new());
    }
    // Built before the clock starts: the router receives them decoded.
    let sessions: Vec<_> = (0..USERS).map(|u| session(u, 0)).collect();
    let started = Instant::now();
    for (u, session) in sessions.into_iter().enumerate() {
        assert!(placement.open(&nodes[u % NODES], session, "").admitted);
    }
    report("open (register + admit)", USERS, started.elapsed());

    let user_ids: Vec<String> = (0..USERS).map(|u| format!("user-{u}")).collect();
    let started = Instant::now();
    for user_id in &user_ids {
        black_box(placement.visible(user_id));
    }
    report("presence of one user", USERS, started.elapsed());

    let started = Instant::now();
    for user_id in &user_ids {
        black_box(placement.sessions_of(user_id));
    }
    report("sessions of one user (placement)", USERS, started.elapsed());

    let started = Instant::now();
    black_box(placement.take_changes(std::time::Instant::now()));
    report("presence changes taken", USERS, started.elapsed());

    let started = Instant::now();
    for (u, user_id) in user_ids.iter().enumerate() {
        placement.close(user_id, &format!("s-{u}-0"));
    }
    report(
        "close (with its session id built)",
        USERS,
        started.elapsed(),
    );
}
