//! pyxia's native core.
//!
//! The write-ahead log lives in [`wal`] as plain Rust with no Python
//! dependency, so `cargo test` exercises it directly. The Python bindings
//! (`pyxia._native`) are compiled only with the `python` feature, which
//! maturin turns on.

pub mod wal;

#[cfg(feature = "python")]
mod python;
