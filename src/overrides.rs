//! Pure: values given on the command line (or as action inputs) that replace parts of
//! `.spot/config.yaml` and the build, checked like the file's own values.
//!
//! Each override names where it came from (`--count` or input `count`) so an error
//! points at what the user typed.

use std::collections::BTreeMap;

use crate::manifest::types::{
    AWS_REGIONS, Deployment, Fallback, Image, InstanceType, Origin, RegionSpec, SshAccess, Tarball,
    TarballSource, parse_duration,
};
use crate::manifest::validate::{DEFAULT_DEST, MAX_TTL_SECS, MIN_TTL_SECS, is_cidr};

/// Replacements; `None` or empty means "as in the config".
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub regions: Vec<String>,
    pub instance_types: Vec<String>,
    pub count: Option<String>,
    pub ttl: Option<String>,
    pub tarball: Option<String>,
    pub fallback: Option<String>,
    pub max_price: Option<String>,
    pub ssh_cidrs: Vec<String>,
    /// `KEY=VALUE` each.
    pub tags: Vec<String>,
}

/// How an override is named in errors: a flag or an action input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flags,
    Inputs,
}

impl Source {
    fn name(self, key: &str) -> String {
        match self {
            Source::Flags => format!("--{key}"),
            Source::Inputs => format!("input `{key}`"),
        }
    }
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
            && self.instance_types.is_empty()
            && self.count.is_none()
            && self.ttl.is_none()
            && self.tarball.is_none()
            && self.fallback.is_none()
            && self.max_price.is_none()
            && self.ssh_cidrs.is_empty()
            && self.tags.is_empty()
    }

    /// Applies the overrides to `deployment`; returns whether the bundle must be listed
    /// again (the build changed), or every problem found.
    pub fn apply(&self, deployment: &mut Deployment, source: Source) -> Result<bool, Vec<String>> {
        let mut errors = Vec::new();
        let config = &mut deployment.config;
        let name = |key: &str| source.name(key);

        let mut types = Vec::new();
        for t in &self.instance_types {
            match InstanceType::parse(t) {
                Ok(t) => types.push(t),
                Err(e) => errors.push(format!("{}: `{t}`: {e}", name("instance-types"))),
            }
        }
        if !self.regions.is_empty() {
            let template = config.regions.first().cloned();
            let mut regions = Vec::new();
            for r in &self.regions {
                if !AWS_REGIONS.contains(&r.as_str()) {
                    errors.push(format!("{}: `{r}` is not an AWS region", name("regions")));
                    continue;
                }
                let spec =
                    config.regions.iter().find(|s| &s.name == r).cloned().unwrap_or_else(|| RegionSpec {
                        name: r.clone(),
                        instance_types: template
                            .as_ref()
                            .map(|t| t.instance_types.clone())
                            .unwrap_or_default(),
                        image: Image::Auto,
                        max_price: None,
                        storage_gb: config.storage_gb,
                        tags: BTreeMap::new(),
                        origin: Origin::default(),
                        // The types are the description's first region's, written there.
                        type_origins: template.as_ref().map(|t| t.type_origins.clone()).unwrap_or_default(),
                    });
                regions.push(spec);
            }
            config.regions = regions;
        }
        if !types.is_empty() {
            for region in &mut config.regions {
                region.instance_types.clone_from(&types);
                region.type_origins = vec![Origin::default(); types.len()];
            }
        }
        if config.regions.iter().any(|r| r.instance_types.is_empty()) {
            errors.push(format!("a region has no instance types: give {}", name("instance-types")));
        }
        if let Some(count) = &self.count {
            match count.trim().parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => {
                    config.total_instances = n;
                    config.written.total_instances = Origin::default();
                }
                _ => {
                    errors.push(format!("{}: `{count}` is not a whole number from 1 to 1000", name("count")));
                }
            }
        }
        if let Some(ttl) = &self.ttl {
            match parse_duration(ttl.trim()) {
                Ok(secs) if (MIN_TTL_SECS..=MAX_TTL_SECS).contains(&secs) => {
                    config.ttl_secs = secs;
                    config.written.ttl = Origin::default();
                }
                Ok(_) => errors.push(format!("{}: `{ttl}` is outside 10m..7d", name("ttl"))),
                Err(e) => errors.push(format!("{}: {e}", name("ttl"))),
            }
        }
        if let Some(fallback) = &self.fallback {
            match fallback.trim() {
                "none" => config.fallback = Fallback::None,
                "on-demand" => config.fallback = Fallback::OnDemand,
                other => {
                    errors.push(format!("{}: `{other}` is not `none` or `on-demand`", name("spot-fallback")));
                }
            }
        }
        if let Some(price) = &self.max_price {
            match price.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p.is_finite() => {
                    config.max_price = Some(p);
                    for region in &mut config.regions {
                        region.max_price = Some(p);
                    }
                }
                _ => errors.push(format!(
                    "{}: `{price}` is not a price in USD per hour, such as 0.05",
                    name("max-price")
                )),
            }
        }
        if !self.ssh_cidrs.is_empty() {
            let bad: Vec<&String> = self.ssh_cidrs.iter().filter(|c| !is_cidr(c)).collect();
            if bad.is_empty() {
                config.ssh_access = SshAccess::Cidrs(self.ssh_cidrs.clone());
                config.written.ssh_cidrs = vec![Origin::default(); self.ssh_cidrs.len()];
            } else {
                for c in bad {
                    errors.push(format!(
                        "{}: `{c}` is not a CIDR block such as 203.0.113.7/32",
                        name("ssh-cidr")
                    ));
                }
            }
        }
        for tag in &self.tags {
            match tag.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    let k = k.trim();
                    if k.starts_with("spot:") || k.starts_with("aws:") || k == "Name" {
                        errors.push(format!(
                            "{}: `{k}` is reserved (spot:, aws: and Name are set by spot)",
                            name("tags")
                        ));
                    } else {
                        config.tags.insert(k.to_string(), v.trim().to_string());
                    }
                }
                _ => errors.push(format!("{}: `{tag}` is not KEY=VALUE", name("tags"))),
            }
        }
        let mut relist = false;
        if let Some(path) = &self.tarball {
            match tarball(deployment, path.trim()) {
                Ok(t) => {
                    deployment.manifest.tarball = Some(t);
                    relist = true;
                }
                Err(e) => errors.push(format!("{}: {e}", name("tarball"))),
            }
        }
        if errors.is_empty() { Ok(relist) } else { Err(errors) }
    }
}

/// A build folder or `.tar.gz` inside the repository, or an http(s) URL.
fn tarball(deployment: &Deployment, path: &str) -> Result<Tarball, String> {
    let dest =
        deployment.manifest.tarball.as_ref().map_or_else(|| DEFAULT_DEST.to_string(), |t| t.dest.clone());
    let origin = Origin::default();
    if path.starts_with("https://") {
        return Ok(Tarball {
            source: TarballSource::Url { url: path.to_string(), sha256: None },
            dest,
            origin,
        });
    }
    if path.starts_with("http://") {
        return Err(format!(
            "`{path}` is plain http: anyone on the way can swap the build; use https:// (or the description's `tarball: {{source, allow_http: true, sha256}}`)"
        ));
    }
    let rel = path.trim_start_matches("./").trim_end_matches('/');
    if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
        return Err(format!("`{path}` must be a path inside the repository"));
    }
    let local = deployment.root.join(rel);
    std::fs::symlink_metadata(&local).map_err(|_| format!("`{path}` does not exist in the repository"))?;
    // As the manifest's own paths: a symlink out of the repository is refused.
    let root = std::fs::canonicalize(&deployment.root).unwrap_or_else(|_| deployment.root.clone());
    let real = crate::manifest::paths::real_inside(&root, &local).map_err(|real| match real {
        Some(real) => format!("`{path}` is a symlink to `{}`, outside the repository", real.display()),
        None => format!("`{path}` is a symlink to nothing"),
    })?;
    if crate::manifest::paths::in_git_dir(real.strip_prefix(&root).unwrap_or(&real)) {
        return Err(format!("`{path}` is the checkout's `.git` (or inside it), which is never shipped"));
    }
    let source = if real.is_dir() {
        TarballSource::Dir { path: rel.to_string(), local }
    } else if rel.ends_with(".tar.gz") || rel.ends_with(".tgz") {
        TarballSource::Archive { path: rel.to_string(), local }
    } else {
        return Err(format!("`{path}` is neither a folder nor a .tar.gz file"));
    };
    Ok(Tarball { source, dest, origin })
}

/// Splits a list input: commas, spaces or new lines.
pub fn list(text: &str) -> Vec<String> {
    text.split([',', '\n', ' ']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::example;

    #[test]
    fn overrides_replace_config_values() {
        let mut d = example();
        let o = Overrides {
            regions: vec!["eu-west-1".into(), "us-west-2".into()],
            instance_types: vec!["m7g.medium".into()],
            count: Some("3".into()),
            ttl: Some("30m".into()),
            fallback: Some("none".into()),
            max_price: Some("0.04".into()),
            ssh_cidrs: vec!["10.0.0.0/8".into()],
            tags: vec!["Team=qa".into()],
            tarball: Some("dist".into()),
        };
        assert_eq!(o.apply(&mut d, Source::Inputs), Ok(true));
        let c = &d.config;
        assert_eq!(c.regions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["eu-west-1", "us-west-2"]);
        assert!(
            c.regions
                .iter()
                .all(|r| r.instance_types[0].as_str() == "m7g.medium" && r.max_price == Some(0.04))
        );
        assert_eq!((c.total_instances, c.ttl_secs, c.fallback), (3, 1800, Fallback::None));
        assert_eq!(c.tags.get("Team").map(String::as_str), Some("qa"));
    }

    #[test]
    fn bad_overrides_are_all_reported_by_name() {
        let mut d = example();
        let o = Overrides {
            regions: vec!["mars-1".into()],
            count: Some("0".into()),
            ttl: Some("1m".into()),
            tags: vec!["spot:x=1".into()],
            tarball: Some("../etc".into()),
            ..Overrides::default()
        };
        let errors = o.apply(&mut d, Source::Inputs).unwrap_err();
        let text = errors.join("\n");
        for needle in ["input `regions`", "input `count`", "input `ttl`", "input `tags`", "input `tarball`"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        let errors = Overrides { count: Some("x".into()), ..Overrides::default() }
            .apply(&mut example(), Source::Flags);
        assert!(errors.unwrap_err()[0].starts_with("--count"));
    }
}
