//! `spot action main|post`: the GitHub Action's two steps (the image's entrypoints):
//! `action::modes::run` and `action::post::run` on the process's runtime.

use crate::error::Error;

/// The main step.
pub fn main() -> Result<(), Error> {
    crate::fence::one_stream();
    super::block_on(crate::action::modes::run())
}

/// The post step.
pub fn post() -> Result<(), Error> {
    crate::fence::one_stream();
    super::block_on(crate::action::post::run())
}
