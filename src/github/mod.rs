//! The GitHub REST API through `octocrab`: the only module that imports it.
//!
//! Three things: a pull request's state (for `reap`), the sticky pull-request comment
//! (found again by a hidden marker, created once, then updated), and nothing else. The
//! base URL comes from `GITHUB_API_URL` (GitHub Enterprise, tests).

use octocrab::Octocrab;

use crate::keys::Secret;

/// The hidden marker that identifies spot's comment on a pull request.
pub const COMMENT_MARKER: &str = "<!-- spot:environment -->";

/// A repository on GitHub, with a token.
#[derive(Debug)]
pub struct GitHub {
    client: Octocrab,
    owner: String,
    repo: String,
}

/// Where a comment came from or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Created(u64),
    Updated(u64),
}

fn describe(e: &octocrab::Error) -> String {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            format!("GitHub answered {}: {}", source.status_code, source.message)
        }
        other => format!("GitHub API call failed: {}", other.to_string().lines().next().unwrap_or_default()),
    }
}

/// An octocrab client for `base` with a bearer `token`; `what` names the URL in errors.
fn client(base: &str, token: &Secret, what: &str) -> Result<Octocrab, String> {
    // Two TLS back ends are linked (the AWS SDK's and octocrab's): name one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Octocrab::builder()
        .base_uri(base)
        .map_err(|e| format!("bad {what} `{base}`: {e}"))?
        .personal_token(token.expose().to_string())
        .build()
        .map_err(|e| describe(&e))
}

/// Asks the runner's OIDC endpoint (`ACTIONS_ID_TOKEN_REQUEST_URL`, with its bearer
/// token) for an ID token with `audience`.
pub async fn oidc_token(request_url: &str, request_token: &Secret, audience: &str) -> Result<Secret, String> {
    let after_scheme = request_url.find("://").map_or(0, |i| i + 3);
    let split = request_url[after_scheme..].find('/').map_or(request_url.len(), |i| after_scheme + i);
    let (base, path) = request_url.split_at(split);
    let sep = if path.contains('?') { '&' } else { '?' };
    let route = format!("{}{sep}audience={audience}", if path.is_empty() { "/" } else { path });
    let client = client(base, request_token, "ACTIONS_ID_TOKEN_REQUEST_URL")?;
    let answer: serde_json::Value = client.get(route, None::<&()>).await.map_err(|e| describe(&e))?;
    answer
        .get("value")
        .and_then(serde_json::Value::as_str)
        .map(Secret::new)
        .ok_or_else(|| "the OIDC endpoint answered without a token".into())
}

impl GitHub {
    /// `repository` is `owner/name`.
    pub fn new(token: &Secret, api_url: &str, repository: &str) -> Result<Self, String> {
        let (owner, repo) =
            repository.split_once('/').ok_or_else(|| format!("`{repository}` is not owner/name"))?;
        let client = client(api_url, token, "GitHub API URL")?;
        Ok(Self { client, owner: owner.to_string(), repo: repo.to_string() })
    }

    /// Whether pull request `number` is closed (merged counts as closed).
    pub async fn pr_closed(&self, number: u64) -> Result<bool, String> {
        // Only `state` matters; reading it alone does not depend on the rest of the shape.
        let route = format!("/repos/{}/{}/pulls/{number}", self.owner, self.repo);
        let pr: serde_json::Value = self.client.get(route, None::<&()>).await.map_err(|e| describe(&e))?;
        match pr.get("state").and_then(serde_json::Value::as_str) {
            Some("closed") => Ok(true),
            Some(_) => Ok(false),
            None => Err(format!("pull request #{number} has no state in GitHub's answer")),
        }
    }

    /// Records a deployment of `git_ref` to `environment` (transient, not production) and
    /// marks it `success` with `url`. Returns the deployment id.
    pub async fn deployment_ready(
        &self,
        environment: &str,
        git_ref: &str,
        url: Option<&str>,
        log_url: Option<&str>,
    ) -> Result<u64, String> {
        let route = format!("/repos/{}/{}/deployments", self.owner, self.repo);
        let body = serde_json::json!({
            "ref": git_ref,
            "environment": environment,
            "transient_environment": true,
            "production_environment": false,
            "auto_merge": false,
            "required_contexts": [],
            "description": "spot environment",
        });
        let made: serde_json::Value = self.client.post(route, Some(&body)).await.map_err(|e| describe(&e))?;
        let id = made.get("id").and_then(serde_json::Value::as_u64).ok_or_else(|| {
            "GitHub created no deployment (a merge or status check may block it)".to_string()
        })?;
        self.deployment_status(id, "success", url, log_url).await?;
        Ok(id)
    }

    /// Marks every deployment of `environment` inactive (shown as destroyed).
    pub async fn deployments_inactive(&self, environment: &str) -> Result<usize, String> {
        let route =
            format!("/repos/{}/{}/deployments?environment={environment}&per_page=100", self.owner, self.repo);
        let list: Vec<serde_json::Value> =
            self.client.get(route, None::<&()>).await.map_err(|e| describe(&e))?;
        let ids: Vec<u64> =
            list.iter().filter_map(|d| d.get("id").and_then(serde_json::Value::as_u64)).collect();
        for id in &ids {
            self.deployment_status(*id, "inactive", None, None).await?;
        }
        Ok(ids.len())
    }

    async fn deployment_status(
        &self,
        id: u64,
        state: &str,
        url: Option<&str>,
        log_url: Option<&str>,
    ) -> Result<(), String> {
        let route = format!("/repos/{}/{}/deployments/{id}/statuses", self.owner, self.repo);
        let mut body = serde_json::json!({ "state": state, "auto_inactive": true, "description": format!("spot: {state}") });
        if let Some(u) = url {
            body["environment_url"] = u.into();
        }
        if let Some(u) = log_url {
            body["log_url"] = u.into();
        }
        let _: serde_json::Value = self.client.post(route, Some(&body)).await.map_err(|e| describe(&e))?;
        Ok(())
    }

    /// Creates spot's comment on pull request `number`, or updates the one carrying the
    /// marker (every page of comments is searched).
    pub async fn upsert_comment(&self, number: u64, body: &str) -> Result<Upsert, String> {
        let body = format!("{COMMENT_MARKER}\n{body}");
        let issues = self.client.issues(&self.owner, &self.repo);
        let mut page = issues.list_comments(number).per_page(100).send().await.map_err(|e| describe(&e))?;
        loop {
            if let Some(c) =
                page.items.iter().find(|c| c.body.as_deref().is_some_and(|b| b.contains(COMMENT_MARKER)))
            {
                let id = c.id;
                issues.update_comment(id, body).await.map_err(|e| describe(&e))?;
                return Ok(Upsert::Updated(id.into_inner()));
            }
            match self.client.get_page(&page.next).await.map_err(|e| describe(&e))? {
                Some(next) => page = next,
                None => break,
            }
        }
        let made = issues.create_comment(number, body).await.map_err(|e| describe(&e))?;
        Ok(Upsert::Created(made.id.into_inner()))
    }
}
