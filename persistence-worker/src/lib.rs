//! The persistence worker: the only database client.
//!
//! - [`store`]: the storage interface and the embedded SQLite store.
pub mod store;
