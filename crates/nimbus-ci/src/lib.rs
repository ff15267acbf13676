//! Nimbus CI workflows: a pure model of the GitHub Actions subset that Nimbus runs.
//!
//! Workflows are YAML files in `.nimbus/workflows/` ([`WORKFLOW_DIR`]). This crate reads one
//! ([`parse`]), says whether a push starts it ([`Workflow::triggered_by`]), expands and renders
//! its jobs for one push ([`plan_run`]), fills secrets at execution time ([`render_secrets`]) and
//! masks them in log output ([`Masker`]). It does no I/O: no files, no network, no clock, no
//! async runtime — callers hand it text and get values back.
//!
//! # The supported subset
//!
//! Anything outside it is a [`WorkflowError`] naming the file, line, column and dotted key
//! (`jobs.build.steps[2].uses`), never silently ignored: unknown keys, other events, `uses:`,
//! other expressions, YAML tags, more than one YAML document.
//!
//! | key | accepted |
//! | --- | --- |
//! | `name` | text; defaults to the file name without extension |
//! | `on` | `push`, `[push]` or `{push: {branches, branches-ignore, tags, tags-ignore, paths, paths-ignore}}` |
//! | `env` | `NAME: value`, at workflow, job and step level |
//! | `defaults.run` | `shell`, `working-directory`, at workflow and job level |
//! | `concurrency` | a group, or `{group, cancel-in-progress}` |
//! | `jobs.<id>` | `name`, `runs-on` (a label or a list of labels), `needs` (an id or a list), `env`, `timeout-minutes` (default 360), `strategy`, `defaults`, `steps` |
//! | `strategy` | `matrix` (axes, `include`, `exclude`), `fail-fast` (default true), `max-parallel` |
//! | `steps[*]` | `run` (required), `name`, `env`, `working-directory`, `shell`, `if`, `timeout-minutes` |
//! | `shell` | `bash` (default: `bash --noprofile --norc -eo pipefail {0}`), `sh` (`sh -e {0}`), `python` (`python3 {0}`) |
//! | `if` | `success()` (default), `failure()`, `always()`, also written `${{ always() }}` |
//!
//! Filters use GitHub's patterns (`*`, `**`, `?`, `+`, `[...]`, a leading `!` in lists; see
//! [`Pattern`]) and GitHub's rules: branch filters alone exclude tag pushes and the other way
//! round, path filters are not applied to tag pushes, and pass when the changed paths are not
//! known. `needs` must name existing jobs without cycles. A matrix expands as on GitHub (see
//! [`Matrix`]); its values are kept as written (`3.10` stays `3.10`).
//!
//! # Expressions
//!
//! Only `${{ matrix.KEY }}`, `${{ env.NAME }}`, `${{ secrets.NAME }}` and
//! `${{ github.sha | ref | ref_name | repository | run_id | actor }}` (spaces inside the braces
//! optional) — no functions, operators or other contexts. Where they may appear:
//!
//! - `matrix.*` and `env.*`: job `name`, `runs-on`, `env` values, steps' `name`, `run`, `env`
//!   values and `working-directory`. Each reference is checked at parse time: the key must be in
//!   the job's matrix, the variable defined in an enclosing `env` (a job `env` value sees the
//!   workflow's, a step `env` value the job's, `run` its own step's too).
//! - `secrets.*`: only in `env` values and `run`. [`plan_run`] keeps them verbatim and lists
//!   their names in [`PlannedJob::secrets`]; the runner fills them with [`render_secrets`] just
//!   before execution and masks their values with [`Masker`].
//! - `github.*`: anywhere a string is rendered, also `concurrency`. A context value that contains
//!   `${{` is refused, so a branch name cannot inject a secret reference.
//!
//! # Limits
//!
//! [`Limits`] bounds the file size (checked before parsing), jobs per run after expansion,
//! matrix combinations per job, steps per job and timeouts. YAML nesting is capped at 64 levels
//! and alias expansion at 10,000 nodes, so no input makes the reader recurse deeply or blow up.

mod error;
mod expr;
mod glob;
mod mask;
mod matrix;
mod plan;
mod trigger;
mod workflow;
mod yaml;

pub use error::{Pos, WorkflowError};
pub use expr::{Expr, GithubField, Template, render_secrets};
pub use glob::Pattern;
pub use mask::{MASK, MIN_MASKED_LEN, Masker};
pub use matrix::{Combination, Matrix};
pub use plan::{Context, PlannedJob, PlannedStep, RunPlan, plan_run};
pub use trigger::PushEvent;
pub use workflow::{
    Concurrency, DEFAULT_TIMEOUT_MINUTES, Filter, JobDef, Limits, PushFilter, RunDefaults, Shell,
    StepDef, StepIf, Strategy, Triggers, WORKFLOW_DIR, Workflow, parse,
};
