//! `spot bundle`: the exact bundle `create` ships, written to a file for inspection.

use std::io::Write as _;

use crate::bundle;
use crate::cli::BundleArgs;
use crate::error::Error;

pub fn run(args: &BundleArgs) -> Result<(), Error> {
    let format = super::default_format(args.format);
    let (_, listing) = crate::ops::load_checked(&args.dir, format, true)?;
    let packed = if args.output.as_os_str() == "-" {
        let stdout = std::io::stdout().lock();
        bundle::pack(&listing, args.level, std::io::BufWriter::with_capacity(1 << 20, stdout))
    } else {
        let file = std::fs::File::create(&args.output).map_err(|e| Error::io(&args.output, "create", e))?;
        bundle::pack(&listing, args.level, std::io::BufWriter::with_capacity(1 << 20, file))
    }
    .map_err(|e| Error::io(&args.output, "write the bundle to", e))?;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "bundle: {} files, {} bytes of content, {} bytes packed, sha256 {}",
        packed.files, listing.total_bytes, packed.bytes, packed.sha256
    );
    Ok(())
}
