//! `spot action main|post`: the GitHub Action's two steps (the image's entrypoints), each
//! one runtime around `action::main` or `action::post`.

use crate::error::Error;

/// The main step.
pub fn main() -> Result<(), Error> {
    super::runtime()?.block_on(crate::action::modes::run())
}

/// The post step.
pub fn post() -> Result<(), Error> {
    super::runtime()?.block_on(crate::action::post::run())
}
