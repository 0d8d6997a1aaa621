//! Helpers for the fuzz targets in `fuzz/` (built only with the `fuzzing` feature, which the
//! fuzz crate turns on): the same guest memory and descriptor-chain builders the server's unit
//! tests use (`server/testutil.rs`), so a fuzz target lays chains out the way the tests do.

// The module is shared with the unit tests, which need neither docs nor a `Default`.
#[allow(missing_docs, clippy::new_without_default)]
#[path = "server/testutil.rs"]
mod testutil;

pub use testutil::{Guest, MEM_END, REGION_SPLIT, REPLY_ADDR, REQ_ADDR};
