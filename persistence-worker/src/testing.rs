//! What the tests of the CQL store share, in this crate and others: the server they run
//! against and a keyspace of their own.

use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;

use crate::store::cql::{CqlStore, migrations};

/// A single node's replication, for test keyspaces.
pub const REPLICATION: &str = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}";

/// The CQL server to test against (`host:port`) and its name: ScyllaDB when `SCYLLA_URI` is set,
/// else the Apache Cassandra node that the test command starts (`CASSANDRA_URI`). `None`, after
/// saying that `test` was skipped, outside CI without either; in CI a missing server fails.
pub fn cql_server(test: &str) -> Option<String> {
    let found = [
        ("SCYLLA_URI", "ScyllaDB"),
        ("CASSANDRA_URI", "Apache Cassandra"),
    ]
    .into_iter()
    .find_map(|(variable, name)| Some((std::env::var(variable).ok()?, variable, name)));
    let Some((uri, variable, name)) = found else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the store tests on a real CQL server: the test command starts one"
        );
        eprintln!("{test}: skipped, no CQL server (set SCYLLA_URI or CASSANDRA_URI)");
        return None;
    };
    eprintln!("{test}: on {name} at {uri} ({variable})");
    Some(uri)
}

/// The PEM file of the CA that signed the test server's certificate (`SCYLLA_TLS_CA` with
/// `SCYLLA_URI`, else `CASSANDRA_TLS_CA`, which the test command sets). `None`, after saying that
/// `test` was skipped, outside CI without it; in CI with the Cassandra node a missing CA fails.
pub fn cql_tls_ca(test: &str) -> Option<std::path::PathBuf> {
    let variable = if std::env::var_os("SCYLLA_URI").is_some() {
        "SCYLLA_TLS_CA"
    } else {
        "CASSANDRA_TLS_CA"
    };
    if let Some(ca) = std::env::var_os(variable) {
        return Some(ca.into());
    }
    assert!(
        variable == "SCYLLA_TLS_CA" || std::env::var_os("CI").is_none(),
        "CI runs the TLS test: the test command starts the node with TLS and sets {variable}"
    );
    eprintln!("{test}: skipped, no TLS CA (set {variable} to the server's CA file)");
    None
}

/// A fresh keyspace name for one test.
pub fn keyspace(test: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("chat_{test}_{}", &suffix[..8])
}

/// A store in a fresh keyspace of the server at `uri`, migrated, and the keyspace's name.
pub async fn fresh_store(uri: &str, test: &str) -> (CqlStore, String) {
    let keyspace = keyspace(test);
    let session = SessionBuilder::new()
        .known_node(uri)
        .build()
        .await
        .expect("the CQL server answers");
    migrations::apply(&session, &keyspace, REPLICATION)
        .await
        .expect("the migrations apply");
    (store(session).await, keyspace)
}

/// Another session's store on `keyspace`, migrated already.
pub async fn store_in(uri: &str, keyspace: &str) -> CqlStore {
    let session = SessionBuilder::new()
        .known_node(uri)
        .use_keyspace(keyspace, false)
        .build()
        .await
        .expect("the CQL server answers");
    store(session).await
}

async fn store(session: scylla::client::session::Session) -> CqlStore {
    CqlStore::new(session, Consistency::LocalQuorum)
        .await
        .expect("the statements prepare")
}

/// The worker's flags for the CQL store at `uri`, in `keyspace`, migrated at start.
pub fn worker_flags(uri: &str, keyspace: &str) -> Vec<String> {
    [
        "--store",
        "scylla",
        "--scylla-nodes",
        uri,
        "--scylla-keyspace",
        keyspace,
        "--scylla-replication",
        REPLICATION,
        "--migrate",
    ]
    .map(str::to_owned)
    .to_vec()
}
