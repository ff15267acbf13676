//! A workflow and a push's context → the jobs of one run, expanded and rendered.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::WorkflowError;
use crate::expr::{Expr, Template, Vars};
use crate::workflow::{JobDef, Limits, Shell, StepIf, Workflow};

/// The run's context, read by `${{ github.* }}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    /// The commit id (`github.sha`).
    pub sha: String,
    /// `refs/heads/main` or `refs/tags/v1` (`github.ref`).
    pub git_ref: String,
    /// `main` or `v1` (`github.ref_name`).
    pub ref_name: String,
    /// The repository's name (`github.repository`).
    pub repository: String,
    /// The run's id (`github.run_id`).
    pub run_id: String,
    /// Who pushed (`github.actor`).
    pub actor: String,
}

/// Everything needed to run one workflow for one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPlan {
    /// The workflow's file.
    pub workflow: String,
    /// The workflow's name.
    pub name: String,
    /// The rendered concurrency group and whether a newer run cancels a running one.
    pub concurrency: Option<(String, bool)>,
    /// Every job after matrix expansion; a job comes after all the jobs it needs.
    pub jobs: Vec<PlannedJob>,
}

/// One job to run on one machine. Serializable, so an executor can store it with the job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannedJob {
    /// Unique in the run: `build`, or `test (linux, 1)` for a matrix instance.
    pub key: String,
    /// The id under `jobs:`.
    pub job_id: String,
    /// What to show: the rendered `name` (with the matrix values appended when the name does not
    /// use them), or the key.
    pub name: String,
    /// The instance's matrix values (empty without a matrix).
    pub matrix: BTreeMap<String, String>,
    /// Labels a machine must have.
    pub runs_on: Vec<String>,
    /// Keys of every instance of every job this one needs.
    pub needs: Vec<String>,
    /// Workflow `env` overlaid with job `env`, rendered (secret references kept).
    pub env: BTreeMap<String, String>,
    pub timeout_minutes: u32,
    /// `strategy.fail-fast`: a failing instance cancels the other instances of the same job.
    pub fail_fast: bool,
    /// `strategy.max-parallel`: at most this many instances of the same job at once.
    pub max_parallel: Option<u32>,
    pub steps: Vec<PlannedStep>,
    /// Names of the secrets the job's `env` values and scripts reference.
    pub secrets: BTreeSet<String>,
}

/// One step, rendered except for `${{ secrets.NAME }}`, which [`crate::render_secrets`] fills
/// at execution time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannedStep {
    /// `name`, or the first non-empty line of `run`.
    pub name: String,
    pub run: String,
    pub shell: Shell,
    /// The step's own `env` (to overlay on the job's).
    pub env: BTreeMap<String, String>,
    pub working_directory: Option<String>,
    pub condition: StepIf,
    pub timeout_minutes: Option<u32>,
}

/// Jobs in an order where each comes after those it needs; ties keep file order.
fn topological(jobs: &[JobDef]) -> Vec<&JobDef> {
    let mut placed: Vec<&JobDef> = Vec::with_capacity(jobs.len());
    while placed.len() < jobs.len() {
        let ready = jobs.iter().find(|job| {
            !placed.iter().any(|p| p.id == job.id)
                && job.needs.iter().all(|n| placed.iter().any(|p| &p.id == n))
        });
        match ready {
            Some(job) => placed.push(job),
            // parse() refuses cycles; stop rather than loop should a hand-built workflow have one
            None => break,
        }
    }
    placed
}

fn uses_matrix(template: &Template) -> bool {
    template
        .expressions()
        .any(|(e, _)| matches!(e, Expr::Matrix(_)))
}

/// Expands and renders the jobs of `wf` for one push.
pub fn plan_run(
    wf: &Workflow,
    context: &Context,
    limits: &Limits,
) -> Result<RunPlan, WorkflowError> {
    let file = wf.file.as_str();
    let no_values = BTreeMap::new();
    let mut workflow_secrets = BTreeSet::new();
    let top = Vars {
        matrix: &no_values,
        env: &no_values,
        context,
    };
    let mut workflow_env = BTreeMap::new();
    for (name, value) in &wf.env_templates {
        workflow_env.insert(
            name.clone(),
            value.render(file, &top, &mut workflow_secrets)?,
        );
    }
    let concurrency = match (&wf.concurrency, &wf.concurrency_group) {
        (Some(c), Some(group)) => Some((
            group.render(file, &top, &mut BTreeSet::new())?,
            c.cancel_in_progress,
        )),
        _ => None,
    };

    let mut jobs: Vec<PlannedJob> = Vec::new();
    let mut keys_of: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for job in topological(&wf.jobs) {
        let combinations = match &job.strategy {
            None => vec![Vec::new()],
            Some(strategy) => strategy
                .matrix
                .combinations(limits.max_matrix)
                .map_err(|n| {
                    WorkflowError::at(
                        file,
                        None,
                        &format!("jobs.{}.strategy.matrix", job.id),
                        format!(
                            "matrix of job `{}` expands to {n} combinations; the limit is {}",
                            job.id, limits.max_matrix
                        ),
                    )
                })?,
        };
        let needs: Vec<String> = job
            .needs
            .iter()
            .flat_map(|n| keys_of.get(n.as_str()).cloned().unwrap_or_default())
            .collect();
        let mut keys = Vec::new();
        for combination in combinations {
            let suffix = combination
                .iter()
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let mut key = if combination.is_empty() {
                job.id.clone()
            } else {
                format!("{} ({suffix})", job.id)
            };
            if jobs.iter().any(|j| j.key == key) {
                let base = key.clone();
                let mut n = 2;
                while jobs.iter().any(|j| j.key == key) {
                    key = format!("{base} #{n}");
                    n += 1;
                }
            }
            let matrix: BTreeMap<String, String> = combination.into_iter().collect();
            let planned = plan_job(
                wf,
                job,
                &matrix,
                &workflow_env,
                &workflow_secrets,
                context,
                key.clone(),
                needs.clone(),
                &suffix,
            )?;
            keys.push(key);
            jobs.push(planned);
            if jobs.len() > limits.max_jobs {
                return Err(WorkflowError::at(
                    file,
                    None,
                    "jobs",
                    format!("the workflow expands to more than {} jobs", limits.max_jobs),
                ));
            }
        }
        keys_of.insert(job.id.as_str(), keys);
    }
    Ok(RunPlan {
        workflow: wf.file.clone(),
        name: wf.name.clone(),
        concurrency,
        jobs,
    })
}

#[allow(clippy::too_many_arguments)]
fn plan_job(
    wf: &Workflow,
    job: &JobDef,
    matrix: &BTreeMap<String, String>,
    workflow_env: &BTreeMap<String, String>,
    workflow_secrets: &BTreeSet<String>,
    context: &Context,
    key: String,
    needs: Vec<String>,
    suffix: &str,
) -> Result<PlannedJob, WorkflowError> {
    let file = wf.file.as_str();
    let mut secrets = workflow_secrets.clone();
    let outer = Vars {
        matrix,
        env: workflow_env,
        context,
    };
    let mut env = workflow_env.clone();
    for (name, value) in &job.env {
        env.insert(name.clone(), value.render(file, &outer, &mut secrets)?);
    }
    let vars = Vars {
        matrix,
        env: &env,
        context,
    };
    let mut no_secrets = BTreeSet::new();
    let name = match &job.name {
        Some(t) if matrix.is_empty() || uses_matrix(t) => t.render(file, &vars, &mut no_secrets)?,
        Some(t) => format!("{} ({suffix})", t.render(file, &vars, &mut no_secrets)?),
        None => key.clone(),
    };
    let mut runs_on = Vec::new();
    for label in &job.runs_on {
        let rendered = label.render(file, &vars, &mut no_secrets)?;
        if rendered.trim().is_empty() {
            return Err(WorkflowError::at(
                file,
                Some(label.pos),
                &label.key,
                "the label is empty for this run",
            ));
        }
        runs_on.push(rendered);
    }
    let mut steps = Vec::new();
    for step in &job.steps {
        let mut step_env = BTreeMap::new();
        for (name, value) in &step.env {
            step_env.insert(name.clone(), value.render(file, &vars, &mut secrets)?);
        }
        let mut all_env = env.clone();
        all_env.extend(step_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let step_vars = Vars {
            matrix,
            env: &all_env,
            context,
        };
        let run = step.run.render(file, &step_vars, &mut secrets)?;
        let name = match &step.name {
            Some(t) => t.render(file, &step_vars, &mut no_secrets)?,
            None => run
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or_default()
                .to_owned(),
        };
        let working_directory = step
            .working_directory
            .as_ref()
            .or(job.defaults.working_directory.as_ref())
            .or(wf.defaults.working_directory.as_ref())
            .map(|t| t.render(file, &step_vars, &mut no_secrets))
            .transpose()?;
        steps.push(PlannedStep {
            name,
            run,
            shell: step
                .shell
                .or(job.defaults.shell)
                .or(wf.defaults.shell)
                .unwrap_or_default(),
            env: step_env,
            working_directory,
            condition: step.condition,
            timeout_minutes: step.timeout_minutes,
        });
    }
    Ok(PlannedJob {
        key,
        job_id: job.id.clone(),
        name,
        matrix: matrix.clone(),
        runs_on,
        needs,
        env,
        timeout_minutes: job.timeout_minutes,
        fail_fast: job.strategy.as_ref().is_none_or(|s| s.fail_fast),
        max_parallel: job.strategy.as_ref().and_then(|s| s.max_parallel),
        steps,
        secrets,
    })
}
