//! Finding deployments by their tags alone, across regions, with no local state.
//!
//! Per region: one paginated instance describe and one describe per other resource
//! type, all filtered by tag, so the cost grows with regions, not with instances.
//! Everything is grouped by its `spot:deployment` tag.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt as _;
use serde::Serialize;

use crate::plan::tag;
use crate::provider::{Cloud, Error, Instance, Kind, Resource, Tags};

/// One deployment as found in the cloud.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Deployed {
    pub deployment_id: String,
    pub repository: Option<String>,
    pub pr: Option<String>,
    pub run_id: Option<String>,
    pub expires_at: Option<String>,
    /// Every `spot:repository` its resources carry: more than one when two repositories
    /// use the same id (in different regions), which the first tags seen cannot tell.
    #[serde(skip)]
    pub repositories: BTreeSet<String>,
    pub regions: BTreeSet<String>,
    pub instances: Vec<Instance>,
    /// Everything else (security groups, key pairs, templates, fleets, VPC parts).
    pub resources: Vec<Resource>,
}

impl Deployed {
    /// Instances as resources, followed by the rest: what teardown takes.
    pub fn all_resources(&self) -> Vec<Resource> {
        let mut all: Vec<Resource> = self
            .instances
            .iter()
            .map(|i| Resource {
                kind: Kind::Instance,
                region: i.region.clone(),
                id: i.id.clone(),
                name: None,
                tags: i.tags.clone(),
            })
            .collect();
        all.extend(self.resources.iter().cloned());
        all
    }

    /// Adds what a run recorded (its state file) that the tags did not show: EC2's
    /// tag-filtered reads lag behind its writes, and an instant fleet is listed only by id.
    pub fn add_recorded(&mut self, recorded: &[Resource]) {
        let known = self.all_resources();
        for r in recorded {
            if !known.iter().any(|k| k.kind == r.kind && k.region == r.region && k.id == r.id) {
                self.regions.insert(r.region.clone());
                self.resources.push(r.clone());
            }
        }
    }

    fn note_tags(&mut self, tags: &Tags, region: &str) {
        self.regions.insert(region.to_string());
        let take = |key: &str, slot: &mut Option<String>| {
            if slot.is_none() {
                *slot = tags.get(key).cloned();
            }
        };
        take(tag::REPOSITORY, &mut self.repository);
        self.repositories.extend(tags.get(tag::REPOSITORY).cloned());
        take(tag::PR, &mut self.pr);
        take(tag::RUN_ID, &mut self.run_id);
        take(tag::EXPIRES_AT, &mut self.expires_at);
    }
}

/// The deployment a tagged item belongs to, noting its tags.
fn group<'a>(found: &'a mut BTreeMap<String, Deployed>, tags: &Tags, region: &str) -> &'a mut Deployed {
    let id = tags.get(tag::DEPLOYMENT).cloned().unwrap_or_default();
    let entry =
        found.entry(id.clone()).or_insert_with(|| Deployed { deployment_id: id, ..Deployed::default() });
    entry.note_tags(tags, region);
    entry
}

/// One region's instances and other resources.
type RegionFinds = Result<(Vec<Instance>, Vec<Resource>), Error>;

/// Everything tagged `spot:managed-by=spot` (and `extra`) in `regions`, by deployment.
pub async fn discover<C: Cloud>(
    cloud: &C,
    regions: &[String],
    extra: &Tags,
) -> Result<BTreeMap<String, Deployed>, Error> {
    discover_beyond(cloud, regions, &[], extra).await.map(|(found, _)| found)
}

/// [`discover`] in `regions` and in `beyond`: regions looked in only in case, where an
/// answer that the region refuses this account ([`Error::region_refused`]) skips it
/// (returned) instead of failing the search.
pub async fn discover_beyond<C: Cloud>(
    cloud: &C,
    regions: &[String],
    beyond: &[String],
    extra: &Tags,
) -> Result<(BTreeMap<String, Deployed>, Vec<Error>), Error> {
    let mut filter: Tags = [(tag::MANAGED_BY.to_string(), tag::MANAGED_BY_VALUE.to_string())].into();
    filter.extend(extra.clone());
    let per_region: Vec<RegionFinds> = futures::stream::iter(regions.iter().chain(beyond))
        .map(|region| {
            let filter = &filter;
            async move { cloud.tagged(region, filter).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut found: BTreeMap<String, Deployed> = BTreeMap::new();
    let mut skipped = Vec::new();
    for result in per_region {
        let (instances, resources) = match result {
            Ok(finds) => finds,
            Err(e) if e.region_refused() && beyond.contains(&e.region) && !regions.contains(&e.region) => {
                skipped.push(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        for i in instances {
            group(&mut found, &i.tags, &i.region).instances.push(i);
        }
        for r in resources {
            group(&mut found, &r.tags, &r.region).resources.push(r);
        }
    }
    for f in found.values_mut() {
        f.instances.sort_by(|a, b| (&a.region, &a.id).cmp(&(&b.region, &b.id)));
        f.resources.sort();
    }
    skipped.sort_by(|a, b| a.region.cmp(&b.region));
    // Not one region answered: that is the credentials or their policy, not the regions.
    if regions.is_empty() && !beyond.is_empty() && skipped.len() == beyond.len() {
        return Err(skipped.swap_remove(0));
    }
    Ok((found, skipped))
}
