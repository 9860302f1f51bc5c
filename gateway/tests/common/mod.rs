//! A real cluster for tests (see `chat_gateway::testing`) and the clients of its gateways.

#![allow(dead_code, unreachable_pub)] // Each test file uses part of it.

pub use chat_gateway::testing::client::*;
pub use chat_gateway::testing::*;

/// Clients of a test cluster.
#[allow(async_fn_in_trait)]
pub trait ClusterClients {
    /// A connected, authenticated client of `user` on gateway `gateway`.
    async fn client(&self, gateway: usize, user: &str) -> Client;
}

impl ClusterClients for Cluster {
    async fn client(&self, gateway: usize, user: &str) -> Client {
        Client::connect(&self.url(gateway), user).await
    }
}
