//! Nimbus Git CI, the forge side: commit statuses, runs with their jobs, steps and logs, job
//! tokens and sealed per-repository secrets. `nimbusd` parses workflows and executes jobs; this
//! module only records what it reports and derives a run's state from its jobs.
//!
//! Plain data and pure functions live here (states, legal moves, the derived run state, value
//! checks); `store` holds the SQL. Every state change is written together with the events it
//! causes, in one transaction, under [`Ci::lock`].

pub mod store;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use nimbus_store::{SealKey, Sealer};

/// State of a job or a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Success,
    Failure,
    Cancelled,
    Error,
    Skipped,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Queued,
        State::Running,
        State::Success,
        State::Failure,
        State::Cancelled,
        State::Error,
        State::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Success => "success",
            State::Failure => "failure",
            State::Cancelled => "cancelled",
            State::Error => "error",
            State::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, State::Queued | State::Running)
    }
}

/// Whether a job or step may go from `from` to `to`: `Ok(true)` for a change, `Ok(false)` when
/// it is already there (a repeated report is harmless), `Err` naming why the move is illegal.
/// A finished job changes only through a rerun, and nothing goes back to queued.
pub fn check_move(from: State, to: State) -> Result<bool, String> {
    if from == to {
        return Ok(false);
    }
    if from.is_terminal() {
        return Err(format!(
            "cannot move from {} to {}: it is finished (only a rerun starts it again)",
            from.as_str(),
            to.as_str()
        ));
    }
    if to == State::Queued {
        return Err(format!("cannot move from {} back to queued", from.as_str()));
    }
    Ok(true)
}

/// A run's state, derived from its jobs' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Queued,
    Running,
    Finished(Conclusion),
}

/// How a finished run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Conclusion {
    Success,
    Failure,
    Error,
    Cancelled,
}

impl Conclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Error => "error",
            Conclusion::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Conclusion> {
        [
            Conclusion::Success,
            Conclusion::Failure,
            Conclusion::Error,
            Conclusion::Cancelled,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl RunState {
    /// The `state` field of a run: queued, running, or the conclusion.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Finished(conclusion) => conclusion.as_str(),
        }
    }
    pub fn conclusion(self) -> Option<Conclusion> {
        match self {
            RunState::Finished(conclusion) => Some(conclusion),
            _ => None,
        }
    }
}

/// Queued while no job has started, running until every job is finished, then failure if any
/// job failed, else error, else cancelled, else success (skipped jobs count as success).
pub fn derive(jobs: &[State]) -> RunState {
    if jobs.iter().all(|s| *s == State::Queued) {
        return RunState::Queued;
    }
    if !jobs.iter().all(|s| s.is_terminal()) {
        return RunState::Running;
    }
    let any = |state: State| jobs.contains(&state);
    RunState::Finished(if any(State::Failure) {
        Conclusion::Failure
    } else if any(State::Error) {
        Conclusion::Error
    } else if any(State::Cancelled) {
        Conclusion::Cancelled
    } else {
        Conclusion::Success
    })
}

/// State of a commit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Pending,
    Running,
    Success,
    Failure,
    Error,
    Cancelled,
}

impl StatusState {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Running => "running",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
            StatusState::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<StatusState> {
        [
            StatusState::Pending,
            StatusState::Running,
            StatusState::Success,
            StatusState::Failure,
            StatusState::Error,
            StatusState::Cancelled,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// The combined state of a commit's latest statuses: failure, error or cancelled if any is
/// (in that order), else running if any runs, else pending if any waits, else success. No
/// statuses at all is pending.
pub fn combine(states: &[StatusState]) -> StatusState {
    let any = |state: StatusState| states.contains(&state);
    if states.is_empty() {
        StatusState::Pending
    } else if any(StatusState::Failure) {
        StatusState::Failure
    } else if any(StatusState::Error) {
        StatusState::Error
    } else if any(StatusState::Cancelled) {
        StatusState::Cancelled
    } else if any(StatusState::Running) {
        StatusState::Running
    } else if any(StatusState::Pending) {
        StatusState::Pending
    } else {
        StatusState::Success
    }
}

/// A full 40-hex commit id, lowercased; `None` for anything else.
pub fn full_sha(text: &str) -> Option<String> {
    (text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

/// Checks a free-text field: `min..=max` bytes and no control characters but tab and newline
/// when `multiline`.
pub fn check_text(
    field: &str,
    value: &str,
    min: usize,
    max: usize,
    multiline: bool,
) -> Result<(), String> {
    if value.len() < min || value.len() > max {
        return Err(if min == 0 {
            format!("{field}: must be at most {max} bytes (got {})", value.len())
        } else {
            format!(
                "{field}: must be {min} to {max} bytes (got {})",
                value.len()
            )
        });
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() && !(multiline && (*c == '\n' || *c == '\t')))
    {
        return Err(format!(
            "{field}: must not contain control characters (found U+{:04X})",
            c as u32
        ));
    }
    Ok(())
}

/// A job key: what nimbusd calls a job in URLs (`build`, `test (linux, 1)` for a matrix
/// instance). 1 to 255 bytes; spaces inside, but no leading or trailing space, no `/`, no other
/// whitespace and no control characters.
pub fn check_job_key(field: &str, key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 255 {
        return Err(format!(
            "{field}: '{key}' must be 1 to 255 bytes (got {})",
            key.len()
        ));
    }
    if key.starts_with(' ') || key.ends_with(' ') {
        return Err(format!(
            "{field}: '{key}' must not start or end with a space"
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| *c == '/' || (c.is_whitespace() && *c != ' ') || c.is_control())
    {
        return Err(format!(
            "{field}: '{key}' must not contain {c:?} (no '/', tabs, newlines or control characters)"
        ));
    }
    Ok(())
}

/// A secret's name: `[A-Z_][A-Z0-9_]*`, at most 100 characters.
pub fn check_secret_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_');
    if !first_ok
        || name.len() > 100
        || !bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "name: '{}' must match [A-Z_][A-Z0-9_]* and be at most 100 characters",
            name.chars().take(120).collect::<String>()
        ));
    }
    Ok(())
}

/// Whether the `needs` of jobs form no cycle; `Err` names a job on a cycle.
pub fn check_acyclic(jobs: &[(&str, Vec<&str>)]) -> Result<(), String> {
    use std::collections::HashMap;
    let index: HashMap<&str, usize> = jobs.iter().enumerate().map(|(i, j)| (j.0, i)).collect();
    // 0 unvisited, 1 on the stack, 2 done
    let mut mark = vec![0u8; jobs.len()];
    for start in 0..jobs.len() {
        if mark[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        mark[start] = 1;
        while let Some((node, edge)) = stack.pop() {
            if let Some(next) = jobs[node].1.get(edge) {
                stack.push((node, edge + 1));
                let Some(&next) = index.get(next) else {
                    continue;
                };
                match mark[next] {
                    0 => {
                        mark[next] = 1;
                        stack.push((next, 0));
                    }
                    1 => return Err(jobs[next].0.to_owned()),
                    _ => {}
                }
            } else {
                mark[node] = 2;
            }
        }
    }
    Ok(())
}

/// CI state shared by the handlers: the write lock, the secret sealer, the log cap.
pub struct Ci {
    /// Serialises CI state changes so a run's derived state and its events are computed from a
    /// consistent view (one server process owns its store).
    pub lock: tokio::sync::Mutex<()>,
    pub sealer: Sealer,
    pub log_limit: u64,
}

impl Ci {
    pub fn new(key: SealKey, log_limit: u64) -> Ci {
        Ci {
            lock: tokio::sync::Mutex::new(()),
            sealer: Sealer::new(key),
            log_limit,
        }
    }
}

impl std::fmt::Debug for Ci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ci")
            .field("sealer", &"[redacted]")
            .field("log_limit", &self.log_limit)
            .finish()
    }
}

/// The associated data that binds a sealed secret to its repository and name.
pub fn secret_aad(repo_id: &str, name: &str) -> Vec<u8> {
    format!("ci-secret:{repo_id}:{name}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(jobs: &[State], expect: &str) {
        assert_eq!(derive(jobs).as_str(), expect, "jobs {jobs:?}");
    }

    #[test]
    fn run_state_from_jobs() {
        use State::*;
        check(&[Queued, Queued], "queued");
        check(&[Running, Queued], "running");
        check(&[Success, Queued], "running");
        check(&[Success, Skipped], "success");
        check(&[Success, Failure, Error], "failure");
        check(&[Success, Error, Cancelled], "error");
        check(&[Cancelled, Skipped], "cancelled");
        check(&[Skipped], "success");
    }

    #[test]
    fn moves() {
        use State::*;
        assert_eq!(check_move(Queued, Running), Ok(true));
        assert_eq!(check_move(Queued, Skipped), Ok(true));
        assert_eq!(check_move(Running, Success), Ok(true));
        assert_eq!(check_move(Success, Success), Ok(false));
        assert!(check_move(Success, Running).is_err());
        assert!(check_move(Failure, Success).is_err());
        assert!(check_move(Running, Queued).is_err());
    }

    #[test]
    fn combined_status() {
        use StatusState::*;
        let check = |states: &[StatusState], expect: StatusState| {
            assert_eq!(combine(states), expect, "{states:?}")
        };
        check(&[], Pending);
        check(&[Success, Success], Success);
        check(&[Success, Running, Pending], Running);
        check(&[Success, Pending], Pending);
        check(&[Pending, Cancelled], Cancelled);
        check(&[Error, Failure], Failure);
    }

    #[test]
    fn names_and_keys() {
        assert!(check_secret_name("API_TOKEN_2").is_ok());
        assert!(check_secret_name("_X").is_ok());
        for bad in ["", "2X", "lower", "A-B", &"A".repeat(101)] {
            assert!(check_secret_name(bad).is_err(), "{bad}");
        }
        assert!(check_job_key("key", "test-linux-1.80").is_ok());
        assert!(
            check_job_key("key", "test (linux, 1)").is_ok(),
            "matrix keys"
        );
        for bad in ["", "a/b", " a", "a ", "a\tb", "a\u{7}"] {
            assert!(check_job_key("key", bad).is_err(), "{bad:?}");
        }
        assert_eq!(full_sha(&"A".repeat(40)), Some("a".repeat(40)));
        assert_eq!(full_sha("abc"), None);
    }

    #[test]
    fn cycles() {
        let ok = [("a", vec![]), ("b", vec!["a"]), ("c", vec!["a", "b"])];
        assert!(check_acyclic(&ok).is_ok());
        let cyclic = [("a", vec!["c"]), ("b", vec!["a"]), ("c", vec!["b"])];
        assert!(check_acyclic(&cyclic).is_err());
        let self_loop = [("a", vec!["a"])];
        assert!(check_acyclic(&self_loop).is_err());
    }
}
