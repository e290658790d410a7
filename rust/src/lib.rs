//! pyxia's native core.
//!
//! The write-ahead log lives in [`wal`] as plain Rust with no Python
//! dependency, so `cargo test` exercises it directly; so do the per-operation
//! hot paths of the shard DB: [`apply`] (a request of plain puts in one call)
//! and [`reads`] (a batch of EQUAL gets in one call); [`frames`] builds the
//! replication messages around the WAL's stored entries. The Python bindings
//! (`pyxia._native`) are compiled only with the `python` feature, which
//! maturin turns on.

pub mod apply;
pub mod frames;
pub mod reads;
pub mod tso;
pub mod wal;

#[cfg(feature = "python")]
mod python;
#[cfg(feature = "python")]
mod tso_server;
