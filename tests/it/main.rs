//! The one integration-test binary: modules by topic, a shared harness in `common`.

mod cli;
mod cloud_init;
mod common;
mod fixtures;
mod props;
mod schema;
