//! Which pushes start a workflow: GitHub's rules for `branches`, `tags` and `paths` filters.

use crate::glob::list_matches;
use crate::workflow::{Filter, Workflow};

/// A push of one ref, as the forge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushEvent<'a> {
    /// `refs/heads/<branch>` or `refs/tags/<tag>`.
    pub git_ref: &'a str,
    /// Paths changed by the push; `None` when unknown (a new branch), and path filters pass.
    pub changed_paths: Option<&'a [String]>,
}

fn passes(filter: &Filter, name: &str) -> bool {
    match filter {
        Filter::Only(patterns) => list_matches(patterns, name),
        Filter::Ignore(patterns) => !list_matches(patterns, name),
    }
}

impl Workflow {
    /// Whether `event` starts this workflow.
    ///
    /// - Without `branches*` and `tags*` filters, every branch and tag push counts. With only
    ///   branch filters, tag pushes never count, and the other way round.
    /// - `paths`: at least one changed path must match; `paths-ignore`: at least one changed path
    ///   must not be ignored. Path filters are not applied to tag pushes, nor when the changed
    ///   paths are unknown.
    /// - Refs other than `refs/heads/*` and `refs/tags/*` never count.
    pub fn triggered_by(&self, event: &PushEvent<'_>) -> bool {
        let Some(push) = &self.on.push else {
            return false;
        };
        let any_ref_filter = push.branches.is_some() || push.tags.is_some();
        if let Some(branch) = event.git_ref.strip_prefix("refs/heads/") {
            let ref_ok = match &push.branches {
                Some(filter) => passes(filter, branch),
                None => !any_ref_filter,
            };
            if !ref_ok {
                return false;
            }
            match (&push.paths, event.changed_paths) {
                (Some(Filter::Only(patterns)), Some(paths)) => {
                    paths.iter().any(|p| list_matches(patterns, p))
                }
                (Some(Filter::Ignore(patterns)), Some(paths)) => {
                    paths.iter().any(|p| !list_matches(patterns, p))
                }
                _ => true,
            }
        } else if let Some(tag) = event.git_ref.strip_prefix("refs/tags/") {
            match &push.tags {
                Some(filter) => passes(filter, tag),
                None => !any_ref_filter,
            }
        } else {
            false
        }
    }
}
