//! Events derived from what a push changed (the diff of the ref snapshots before and after), and
//! the events of CI runs.

use serde_json::json;

use crate::db::NewEvent;
use crate::refs::Snapshot;

pub const REPOSITORY_CREATED: &str = "RepositoryCreated";
pub const BRANCH_CREATED: &str = "BranchCreated";
pub const BRANCH_DELETED: &str = "BranchDeleted";
pub const COMMIT_PUSHED: &str = "CommitPushed";
pub const TAG_CREATED: &str = "TagCreated";
pub const RUN_STARTED: &str = "RunStarted";
pub const RUN_COMPLETED: &str = "RunCompleted";
pub const RUN_CANCEL_REQUESTED: &str = "RunCancelRequested";
pub const RUN_RERUN_REQUESTED: &str = "RunRerunRequested";

pub const ALL: &[&str] = &[
    REPOSITORY_CREATED,
    BRANCH_CREATED,
    BRANCH_DELETED,
    COMMIT_PUSHED,
    TAG_CREATED,
    RUN_STARTED,
    RUN_COMPLETED,
    RUN_CANCEL_REQUESTED,
    RUN_RERUN_REQUESTED,
];

const ZERO: &str = "0000000000000000000000000000000000000000";

pub struct PushContext<'a> {
    pub repo: &'a str,
    pub pusher: &'a str,
    pub url: &'a str,
}

pub fn repository_created(repo: &str, private: bool, url: &str) -> NewEvent {
    NewEvent {
        kind: REPOSITORY_CREATED,
        payload: json!({"event": REPOSITORY_CREATED, "repository": repo, "private": private, "url": url}),
    }
}

/// A run event: `RunStarted` and `RunCompleted` carry the workflow and name (and the
/// conclusion), `RunCancelRequested` only the commit, `RunRerunRequested` the rerun job keys.
pub fn run_event(
    kind: &'static str,
    repo: &str,
    url: &str,
    run: &crate::ci::store::RunRow,
    jobs: &[String],
) -> NewEvent {
    let mut payload = json!({
        "event": kind,
        "repository": repo,
        "url": url,
        "run": run.number,
        "sha": run.sha,
        "ref": run.ref_name,
    });
    match kind {
        RUN_STARTED | RUN_COMPLETED => {
            payload["workflow"] = run.workflow.clone().into();
            payload["name"] = run.name.clone().into();
            if kind == RUN_COMPLETED {
                payload["conclusion"] = run.conclusion.clone().into();
            }
        }
        RUN_RERUN_REQUESTED => payload["jobs"] = jobs.into(),
        _ => {}
    }
    NewEvent { kind, payload }
}

/// Events for the change from `old` to `new`, in ref name order.
pub fn from_ref_diff(old: &Snapshot, new: &Snapshot, ctx: &PushContext<'_>) -> Vec<NewEvent> {
    let mut events = Vec::new();
    let mut names: Vec<&str> = old
        .refs
        .iter()
        .chain(&new.refs)
        .map(|r| r.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let before = old.get(name).map(|r| r.oid.as_str());
        let after = new.get(name).map(|r| r.oid.as_str());
        if before == after {
            continue;
        }
        let payload = |kind: &str| {
            json!({
                "event": kind,
                "repository": ctx.repo,
                "url": ctx.url,
                "ref": name,
                "before": before.unwrap_or(ZERO),
                "after": after.unwrap_or(ZERO),
                "pusher": ctx.pusher,
            })
        };
        if let Some(branch) = name.strip_prefix("refs/heads/") {
            match (before, after) {
                (None, Some(_)) => {
                    let mut p = payload(BRANCH_CREATED);
                    p["branch"] = branch.into();
                    events.push(NewEvent {
                        kind: BRANCH_CREATED,
                        payload: p,
                    });
                    let mut p = payload(COMMIT_PUSHED);
                    p["branch"] = branch.into();
                    events.push(NewEvent {
                        kind: COMMIT_PUSHED,
                        payload: p,
                    });
                }
                (Some(_), None) => {
                    let mut p = payload(BRANCH_DELETED);
                    p["branch"] = branch.into();
                    events.push(NewEvent {
                        kind: BRANCH_DELETED,
                        payload: p,
                    });
                }
                _ => {
                    let mut p = payload(COMMIT_PUSHED);
                    p["branch"] = branch.into();
                    events.push(NewEvent {
                        kind: COMMIT_PUSHED,
                        payload: p,
                    });
                }
            }
        } else if let Some(tag) = name.strip_prefix("refs/tags/")
            && after.is_some()
        {
            let mut p = payload(TAG_CREATED);
            p["tag"] = tag.into();
            events.push(NewEvent {
                kind: TAG_CREATED,
                payload: p,
            });
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refs::{Capabilities, RefEntry};

    fn snap(refs: &[(&str, &str)]) -> Snapshot {
        let caps = Capabilities {
            upload_v0: String::new(),
            receive_v0: String::new(),
            upload_v2: Default::default(),
        };
        let mut refs: Vec<RefEntry> = refs
            .iter()
            .map(|(n, o)| RefEntry {
                name: n.to_string(),
                oid: o.repeat(40),
                peeled: None,
            })
            .collect();
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot::new(None, None, refs, &caps)
    }

    fn check(old: &[(&str, &str)], new: &[(&str, &str)], expect: &[&str]) {
        let ctx = PushContext {
            repo: "r",
            pusher: "p",
            url: "u",
        };
        let got: Vec<String> = from_ref_diff(&snap(old), &snap(new), &ctx)
            .into_iter()
            .map(|e| format!("{} {}", e.kind, e.payload["ref"].as_str().unwrap()))
            .collect();
        assert_eq!(got, expect, "old {old:?} new {new:?}");
    }

    #[test]
    fn ref_diff_events() {
        check(
            &[],
            &[("refs/heads/main", "a")],
            &[
                "BranchCreated refs/heads/main",
                "CommitPushed refs/heads/main",
            ],
        );
        check(
            &[("refs/heads/main", "a")],
            &[("refs/heads/main", "b")],
            &["CommitPushed refs/heads/main"],
        );
        check(
            &[("refs/heads/main", "a")],
            &[("refs/heads/main", "a")],
            &[],
        );
        check(
            &[("refs/heads/x", "a")],
            &[],
            &["BranchDeleted refs/heads/x"],
        );
        check(&[], &[("refs/tags/v1", "a")], &["TagCreated refs/tags/v1"]);
        check(&[("refs/tags/v1", "a")], &[], &[]);
    }
}
