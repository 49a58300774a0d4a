//! chatetl turns a chat service's daily logs into a clean, Hive-partitioned Parquet dataset and
//! daily aggregates.
//!
//! The library holds everything; `src/main.rs` only calls [`app::main_with_args`]. Each stage
//! lives in [`stage`], shares the record model in `record`, and finds its paths in [`layout`].

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod app;
pub mod cli;
pub mod config;
pub mod error;
pub mod exit;
pub mod input;
pub mod kafka;
pub mod layout;
pub mod lock;
pub mod pipeline;
pub mod progress;
pub mod record;
pub mod stage;
pub mod status;

pub use error::{Error, Result};
pub use exit::ExitCode;
