//! Job demand as data: which jobs wait for runners, with which labels, and where each is in its
//! life. The demand book's rules (`nimbus_forge::demand`) and the store's demand tables share
//! these types; the autoscaler reads them.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The labels a job asks for, normalised: lowercase (forges match labels case-insensitively),
/// sorted and without duplicates, so equal demands group together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "Vec<String>", into = "Vec<String>")]
pub struct LabelSet(Vec<String>);

impl LabelSet {
    pub fn new<I, S>(labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut labels: Vec<String> = labels
            .into_iter()
            .map(|label| label.as_ref().trim().to_lowercase())
            .filter(|label| !label.is_empty())
            .collect();
        labels.sort();
        labels.dedup();
        LabelSet(labels)
    }

    pub fn labels(&self) -> &[String] {
        &self.0
    }
}

impl From<Vec<String>> for LabelSet {
    fn from(labels: Vec<String>) -> Self {
        LabelSet::new(labels)
    }
}

impl From<LabelSet> for Vec<String> {
    fn from(labels: LabelSet) -> Self {
        labels.0
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Where a job is in its life, as the forge reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a runner.
    Queued,
    /// Waiting for something else first (an environment approval, a concurrency group).
    Waiting,
    InProgress,
    Completed,
}

impl JobStatus {
    /// Jobs only move forward; `queued` and `waiting` may alternate (approval then queue).
    pub fn rank(self) -> u8 {
        match self {
            JobStatus::Queued | JobStatus::Waiting => 0,
            JobStatus::InProgress => 1,
            JobStatus::Completed => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Waiting => "waiting",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
        }
    }
}

/// A job as the forge's API lists it (the reconcile's view).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgeJob {
    pub job_id: u64,
    pub run_id: u64,
    /// `owner/name`.
    pub repository: String,
    pub labels: LabelSet,
    pub status: JobStatus,
}

/// Where the book's knowledge of a job came from last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Webhook,
    Reconcile,
}

/// What the book knows about one job of one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job: ForgeJob,
    pub runner_name: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub source: Source,
}

/// What recording a job's news did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    Recorded,
    /// The book already knows a later state of the job (a reordered or late delivery).
    Stale,
    /// This delivery id was recorded before (a forge's redelivery); nothing changed.
    Replay,
}

/// A finished job as the store's job history keeps it (past the demand book's pruning): what
/// the autoscaler learns demand from and the cost report prices per job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedJob {
    pub job_id: u64,
    pub run_id: u64,
    pub repository: String,
    pub labels: LabelSet,
    /// The runner that ran it (`nimbus-<machine id>` for Nimbus's runners).
    pub runner_name: Option<String>,
    /// When Nimbus first saw the job.
    #[serde(with = "time::serde::rfc3339")]
    pub queued_at: OffsetDateTime,
    /// When it started running; `None` when its `in_progress` news never came.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
}

impl FinishedJob {
    /// How long the job ran: from its start, or from its queueing when the start is unknown.
    pub fn run_time(&self) -> time::Duration {
        let from = self.started_at.unwrap_or(self.queued_at);
        (self.finished_at - from).max(time::Duration::ZERO)
    }
}
