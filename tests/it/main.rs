//! The one integration-test binary: modules by topic, a shared harness in `common`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod action;
mod bundle;
mod cli;
mod cloud_init;
mod common;
mod deliver;
mod ec2;
mod emulator;
mod fixtures;
mod layers;
mod props;
mod runner_log;
mod schema;
mod ssh;
mod vm;
