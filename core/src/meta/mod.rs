//! The metadata service: the namespace (directories, files, their attributes and layouts) in
//! an embedded ACID store, the registry of targets and pools, and the server that answers
//! clients over the transport.

mod event_loop;
pub mod hydrate;
pub mod link;
pub mod proto;
pub mod repo;
pub mod server;
pub mod store;
pub mod task;
pub mod types;
