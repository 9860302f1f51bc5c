//! Every scenario, small (a few hundred sockets, a few seconds), against a real cluster: the
//! report's counts must show nothing lost and nothing duplicated.

use std::path::Path;

use chat_gateway::testing::{Cluster, SECRET};
use serde_json::Value;

async fn run(cluster: &Cluster, out: &Path, scenario: &str, args: &[&str]) -> Value {
    let urls = format!("{},{}", cluster.url(0), cluster.url(1));
    let dir = out.join(scenario);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-loadtest"))
        .arg(scenario)
        .args(["--urls", &urls, "--jwt-secret", SECRET, "--out"])
        .arg(&dir)
        .args(args)
        .output()
        .await
        .expect("the harness runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{scenario} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        std::fs::read_to_string(dir.join("report.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

fn assert_clean(report: &Value, phase: &Value) {
    let name = &report["scenario"];
    assert!(
        phase["expected_deliveries"].as_u64().unwrap() > 0,
        "{name}: nothing was sent"
    );
    assert_eq!(phase["lost"], 0, "{name}: lost");
    assert_eq!(phase["duplicated"], 0, "{name}: duplicated");
    assert_eq!(phase["out_of_order"], 0, "{name}: out of order");
    assert_eq!(phase["delivered"], phase["expected_deliveries"], "{name}");
    assert_eq!(phase["errors"], 0, "{name}: errors");
    assert_eq!(
        phase["unreadable"], 0,
        "{name}: frames the harness could not read"
    );
    assert_eq!(phase["sent"], phase["acked"], "{name}: every send acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_small_and_loses_nothing() {
    let cluster = Cluster::start().await;
    let out = tempfile::tempdir().unwrap();
    let small = [
        "--rooms",
        "10",
        "--members",
        "10",
        "--duration",
        "3s",
        "--drain",
        "2s",
    ];

    let report = run(
        &cluster,
        out.path(),
        "fanout",
        &[&small[..], &["--rate", "200"]].concat(),
    )
    .await;
    assert_eq!(report["connect"]["connected"], 100);
    assert_eq!(report["phases"][0]["expected_deliveries"], 6_000);
    assert_clean(&report, &report["phases"][0]);

    let ramp = [
        &small[..],
        &[
            "--start-rate",
            "100",
            "--step-factor",
            "2",
            "--max-rate",
            "400",
        ],
    ]
    .concat();
    let report = run(&cluster, out.path(), "ramp", &ramp).await;
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 3, "three steps: 100, 200, 400 a second");
    for phase in phases {
        assert_clean(&report, phase);
    }
    assert_eq!(report["highest_rate_held"], 400.0);

    let report = run(
        &cluster,
        out.path(),
        "storm",
        &[&small[..], &["--rate", "100"]].concat(),
    )
    .await;
    let storm = &report["storm"];
    assert_eq!(storm["connected"], 100, "every socket came back: {storm}");
    let phase = &report["phases"][0];
    // There is no resume yet: what was sent while the sockets were away may be missed, but
    // nothing arrives twice or out of order.
    assert_eq!(phase["duplicated"], 0);
    assert_eq!(phase["out_of_order"], 0);
    assert!(phase["delivered"].as_u64().unwrap() > 0);

    let report = run(
        &cluster,
        out.path(),
        "idle",
        &["--sockets", "200", "--hold", "1s"],
    )
    .await;
    assert_eq!(report["connect"]["connected"], 200);
    assert_eq!(report["connect"]["failed"], 0);

    let longtail = [
        "--nats-url",
        &cluster.nats.url(),
        "--fill-conversations",
        "2000",
        "--quiet-rooms",
        "20",
        "--hot-rooms",
        "4",
        "--rate",
        "20",
        "--cool-down",
        "1s",
    ];
    let report = run(&cluster, out.path(), "longtail", &longtail).await;
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2, "quiet, then hot");
    for phase in phases {
        assert_clean(&report, phase);
    }
    assert_eq!(
        phases[0]["sent"], 20,
        "each quiet conversation got one message"
    );
}
