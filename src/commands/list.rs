//! `spot list`: deployments found by their tags, with no local state.

use std::io::Write as _;

use crate::cli::ListArgs;
use crate::error::Error;
use crate::lifecycle::inventory;
use crate::ops::{self, Session};

pub fn run(args: &ListArgs) -> Result<(), Error> {
    let regions = ops::regions_for(&args.dir, &args.regions)?;
    let found = super::block_on(async {
        let session = Session::open(args.cloud.endpoint_url.as_deref()).await;
        inventory::discover(&session.cloud, &regions, &Default::default()).await
    });
    let found = found.map_err(|e| ops::cloud_error(&e))?;
    if args.json {
        let list: Vec<&inventory::Deployed> = found.values().collect();
        let doc = serde_json::to_value(list).unwrap_or_default();
        return writeln!(std::io::stdout(), "{}", crate::fence::json(&format!("{doc:#}")))
            .map_err(|e| Error::io("stdout", "write to", e));
    }
    let mut out = crate::fence::Guarded::stdout();
    if found.is_empty() {
        let _ = writeln!(out, "no deployments in {}", regions.join(", "));
        return out.flush().map_err(|e| Error::io("stdout", "write to", e));
    }
    for f in found.values() {
        let _ = writeln!(
            out,
            "{}  repository {}  pr {}  expires {}  regions {}",
            f.deployment_id,
            f.repository.as_deref().unwrap_or("-"),
            f.pr.as_deref().unwrap_or("-"),
            f.expires_at.as_deref().unwrap_or("-"),
            f.regions.iter().cloned().collect::<Vec<_>>().join(",")
        );
        for i in &f.instances {
            let address = i.address().unwrap_or("-");
            let _ = writeln!(
                out,
                "  {:<15} {:<16} {:<21} {:<14} {:<10} {:<13} {address}",
                i.region,
                i.az,
                i.id,
                i.instance_type,
                i.market.to_string(),
                i.state
            );
            for url in &i.urls {
                let _ = writeln!(out, "    {url}");
            }
        }
        let _ = writeln!(out, "  and {}", crate::lifecycle::teardown::summarize(&f.resources));
    }
    out.flush().map_err(|e| Error::io("stdout", "write to", e))
}
