//! The typed workflow and its reader: YAML tree → [`Workflow`], refusing every key, value and
//! expression outside the supported subset with the file, line, column and key path.

use std::collections::{BTreeMap, BTreeSet};

use saphyr_parser::ScalarStyle;

use crate::error::{Pos, WorkflowError};
use crate::expr::{Allow, Expr, Layout, Template};
use crate::glob::Pattern;
use crate::matrix::Matrix;
use crate::yaml::{self, Node, Value};

/// Where workflow files live in a repository.
pub const WORKFLOW_DIR: &str = ".nimbus/workflows";

/// `timeout-minutes` of a job that does not set one (GitHub's default).
pub const DEFAULT_TIMEOUT_MINUTES: u32 = 360;

/// Bounds on what one workflow file may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Larger files are refused before parsing (default 512 KiB).
    pub max_file_bytes: usize,
    /// Jobs of one run after matrix expansion (default 256).
    pub max_jobs: usize,
    /// Combinations of one job's matrix (default 256).
    pub max_matrix: usize,
    /// Steps of one job (default 256).
    pub max_steps: usize,
    /// Largest `timeout-minutes` of a job or step (default 4320, three days).
    pub max_timeout_minutes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 512 * 1024,
            max_jobs: 256,
            max_matrix: 256,
            max_steps: 256,
            max_timeout_minutes: 3 * 24 * 60,
        }
    }
}

/// A parsed workflow file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workflow {
    /// The path given to [`parse`], used in every error.
    pub file: String,
    /// `name`, or the file name without its extension.
    pub name: String,
    pub on: Triggers,
    /// Workflow-level `env`, as written (expressions are filled in by [`crate::plan_run`]).
    pub env: BTreeMap<String, String>,
    pub concurrency: Option<Concurrency>,
    /// `defaults.run` of the workflow.
    pub defaults: RunDefaults,
    /// In file order.
    pub jobs: Vec<JobDef>,
    pub(crate) env_templates: BTreeMap<String, Template>,
    pub(crate) concurrency_group: Option<Template>,
}

/// The events that start the workflow. Only `push` exists today.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Triggers {
    pub push: Option<PushFilter>,
}

/// `on.push` filters; `None` means the filter is not set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushFilter {
    /// `branches` or `branches-ignore`.
    pub branches: Option<Filter>,
    /// `tags` or `tags-ignore`.
    pub tags: Option<Filter>,
    /// `paths` or `paths-ignore`.
    pub paths: Option<Filter>,
}

/// A list of patterns that selects (`branches`, `tags`, `paths`) or rejects (`*-ignore`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Only(Vec<Pattern>),
    Ignore(Vec<Pattern>),
}

/// `concurrency`: runs with the same rendered group are serialized; with `cancel_in_progress`
/// a newer run cancels the running one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    /// As written; may contain `${{ github.ref }}` and the like.
    pub group: String,
    pub cancel_in_progress: bool,
}

/// `defaults.run` (workflow or job): a step's shell and working directory when it sets none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunDefaults {
    pub shell: Option<Shell>,
    pub working_directory: Option<Template>,
}

/// One `jobs.<id>` entry, before matrix expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDef {
    pub id: String,
    pub name: Option<Template>,
    /// Labels a machine must have; at least one.
    pub runs_on: Vec<Template>,
    /// Ids of the jobs this one waits for (checked to exist, without cycles).
    pub needs: Vec<String>,
    pub env: BTreeMap<String, Template>,
    pub timeout_minutes: u32,
    pub strategy: Option<Strategy>,
    pub defaults: RunDefaults,
    pub steps: Vec<StepDef>,
}

/// `strategy` of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strategy {
    pub matrix: Matrix,
    /// Cancel the other instances when one fails (default true).
    pub fail_fast: bool,
    /// At most this many instances at once.
    pub max_parallel: Option<u32>,
}

/// One step: a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDef {
    pub name: Option<Template>,
    pub run: Template,
    pub shell: Option<Shell>,
    pub env: BTreeMap<String, Template>,
    pub working_directory: Option<Template>,
    pub condition: StepIf,
    pub timeout_minutes: Option<u32>,
}

/// The interpreter of a step's script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shell {
    /// `bash --noprofile --norc -eo pipefail {0}` (the default)
    #[default]
    Bash,
    /// `sh -e {0}`
    Sh,
    /// `python3 {0}`
    Python,
}

impl Shell {
    /// The command line that runs the script stored at `script`.
    pub fn command(self, script: &str) -> Vec<String> {
        let argv: &[&str] = match self {
            Shell::Bash => &["bash", "--noprofile", "--norc", "-eo", "pipefail"],
            Shell::Sh => &["sh", "-e"],
            Shell::Python => &["python3"],
        };
        argv.iter()
            .map(|s| s.to_string())
            .chain([script.to_owned()])
            .collect()
    }

    /// The name used in workflows.
    pub fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Sh => "sh",
            Shell::Python => "python",
        }
    }

    /// The file extension a runner may give the script (Python wants none, but it reads better).
    pub fn extension(self) -> &'static str {
        match self {
            Shell::Bash | Shell::Sh => "sh",
            Shell::Python => "py",
        }
    }
}

/// When a step runs, given how the job went so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepIf {
    /// `success()` (the default): every earlier step succeeded.
    #[default]
    Success,
    /// `failure()`: an earlier step failed.
    Failure,
    /// `always()`: in any case, also after a cancellation or a timeout.
    Always,
}

impl StepIf {
    /// Whether the step runs when the job has (`true`) or has not failed so far.
    pub fn runs(self, job_failed: bool) -> bool {
        match self {
            StepIf::Success => !job_failed,
            StepIf::Failure => job_failed,
            StepIf::Always => true,
        }
    }
}

/// Keys GitHub knows that Nimbus refuses with a reason rather than as unknown.
fn unsupported(key: &str) -> Option<&'static str> {
    Some(match key {
        "uses" => "`uses` is not supported: Nimbus runs only `run` steps",
        "with" => "`with` is not supported: Nimbus runs only `run` steps (no actions)",
        "permissions" | "services" | "container" | "outputs" | "environment" | "secrets"
        | "run-name" | "continue-on-error" | "id" | "if" | "concurrency" => {
            "is not supported by Nimbus workflows"
        }
        _ => return None,
    })
}

struct Reader<'a> {
    file: &'a str,
    lines: Vec<&'a str>,
    limits: &'a Limits,
}

type R<T> = Result<T, WorkflowError>;

/// A string of a list: its value, position and key path.
type Listed = (String, Pos, String);

fn join(key: &str, child: &str) -> String {
    if key.is_empty() {
        child.to_owned()
    } else {
        format!("{key}.{child}")
    }
}

fn is_identifier(s: &str, dash: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (dash && c == '-'))
}

/// A mapping's entries, checked for duplicates.
struct Entries<'n> {
    items: Vec<(&'n str, Pos, &'n Node)>,
}

impl<'n> Entries<'n> {
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.items
            .iter()
            .find(|(k, _, _)| *k == name)
            .map(|(_, _, v)| *v)
    }
}

impl<'a> Reader<'a> {
    fn err(&self, pos: Pos, key: &str, message: impl Into<String>) -> WorkflowError {
        WorkflowError::at(self.file, Some(pos), key, message)
    }

    fn expected(&self, node: &Node, key: &str, what: &str) -> WorkflowError {
        self.err(
            node.pos,
            key,
            format!("expected {what}, found {}", node.kind()),
        )
    }

    fn entries<'n>(&self, node: &'n Node, key: &str) -> R<Entries<'n>> {
        let Value::Map(map) = &node.value else {
            return Err(self.expected(node, key, "a mapping"));
        };
        let mut items: Vec<(&'n str, Pos, &'n Node)> = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Value::Scalar { text, .. } = &k.value else {
                return Err(self.err(k.pos, key, "mapping keys must be strings"));
            };
            if items.iter().any(|(seen, _, _)| seen == text) {
                return Err(self.err(k.pos, &join(key, text), format!("duplicate key `{text}`")));
            }
            items.push((text, k.pos, v));
        }
        Ok(Entries { items })
    }

    /// A mapping whose keys must be among `allowed`.
    fn fields<'n>(&self, node: &'n Node, key: &str, allowed: &[&str]) -> R<Entries<'n>> {
        let entries = self.entries(node, key)?;
        for (k, pos, _) in &entries.items {
            if allowed.contains(k) {
                continue;
            }
            let message = match unsupported(k) {
                Some(reason) if reason.starts_with('`') => reason.to_owned(),
                Some(reason) => format!("`{k}` {reason}"),
                None => format!("unknown key `{k}`; expected one of: {}", allowed.join(", ")),
            };
            return Err(self.err(*pos, &join(key, k), message));
        }
        Ok(entries)
    }

    fn scalar<'n>(&self, node: &'n Node, key: &str, what: &str) -> R<(&'n str, ScalarStyle)> {
        match &node.value {
            Value::Scalar { text, style } if !node.is_null() => Ok((text, *style)),
            _ => Err(self.expected(node, key, what)),
        }
    }

    fn string(&self, node: &Node, key: &str) -> R<String> {
        Ok(self.scalar(node, key, "a string")?.0.to_owned())
    }

    fn template(&self, node: &Node, key: &str, allow: Allow) -> R<Template> {
        let (text, style) = self.scalar(node, key, "a string")?;
        self.template_of(node, key, text, style, allow)
    }

    /// Like [`Self::template`], but null is the empty string (`env: { X: }`).
    fn env_value(&self, node: &Node, key: &str, allow: Allow) -> R<Template> {
        if node.is_null() {
            return Template::parse(
                self.file,
                key,
                String::new(),
                node.pos,
                Layout::Folded,
                allow,
            );
        }
        self.template(node, key, allow)
    }

    fn template_of(
        &self,
        node: &Node,
        key: &str,
        text: &str,
        style: ScalarStyle,
        allow: Allow,
    ) -> R<Template> {
        let layout = match style {
            ScalarStyle::Literal => Layout::Literal,
            ScalarStyle::Folded => Layout::Folded,
            ScalarStyle::Plain | ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => {
                let offset = usize::from(style != ScalarStyle::Plain);
                let on_line = self
                    .lines
                    .get(node.pos.line.wrapping_sub(1))
                    .and_then(|line| line.char_indices().nth(node.pos.column - 1 + offset))
                    .is_some_and(|(byte, _)| {
                        self.lines[node.pos.line - 1][byte..].starts_with(text)
                    });
                if on_line {
                    Layout::Inline { offset }
                } else {
                    Layout::Folded
                }
            }
        };
        Template::parse(self.file, key, text.to_owned(), node.pos, layout, allow)
    }

    fn bool(&self, node: &Node, key: &str) -> R<bool> {
        match &node.value {
            Value::Scalar {
                text,
                style: ScalarStyle::Plain,
            } => match text.as_str() {
                "true" | "True" | "TRUE" => Ok(true),
                "false" | "False" | "FALSE" => Ok(false),
                _ => Err(self.err(
                    node.pos,
                    key,
                    format!("expected true or false, found `{text}`"),
                )),
            },
            Value::Scalar { text, .. } => Err(self.err(
                node.pos,
                key,
                format!("expected true or false, found the string `{text}`"),
            )),
            _ => Err(self.expected(node, key, "true or false")),
        }
    }

    fn number(&self, node: &Node, key: &str, max: u32) -> R<u32> {
        let (text, style) = self.scalar(node, key, "a number")?;
        let value = (style == ScalarStyle::Plain)
            .then(|| text.parse::<u32>().ok())
            .flatten();
        match value {
            Some(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(self.err(
                node.pos,
                key,
                format!("expected a whole number from 1 to {max}, found `{text}`"),
            )),
        }
    }

    /// A string or a list of strings, with the position of each.
    fn strings(&self, node: &Node, key: &str) -> R<Vec<Listed>> {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let item_key = format!("{key}[{i}]");
                    Ok((self.string(item, &item_key)?, item.pos, item_key))
                })
                .collect(),
            _ => Ok(vec![(self.string(node, key)?, node.pos, key.to_owned())]),
        }
    }

    fn env(&self, node: Option<&Node>, key: &str, allow: Allow) -> R<BTreeMap<String, Template>> {
        let mut env = BTreeMap::new();
        let Some(node) = node else { return Ok(env) };
        for (name, pos, value) in self.entries(node, key)?.items {
            let name_key = join(key, name);
            if !is_identifier(name, false) {
                return Err(self.err(
                    pos,
                    &name_key,
                    format!("`{name}` is not a valid environment variable name"),
                ));
            }
            env.insert(name.to_owned(), self.env_value(value, &name_key, allow)?);
        }
        Ok(env)
    }

    fn shell(&self, node: &Node, key: &str) -> R<Shell> {
        match self.scalar(node, key, "a shell name")?.0 {
            "bash" => Ok(Shell::Bash),
            "sh" => Ok(Shell::Sh),
            "python" => Ok(Shell::Python),
            other => Err(self.err(
                node.pos,
                key,
                format!("unsupported shell `{other}`: Nimbus supports `bash`, `sh` and `python`"),
            )),
        }
    }

    fn defaults(&self, node: Option<&Node>, key: &str) -> R<RunDefaults> {
        let Some(node) = node else {
            return Ok(RunDefaults::default());
        };
        let fields = self.fields(node, key, &["run"])?;
        let Some(run) = fields.get("run") else {
            return Ok(RunDefaults::default());
        };
        let key = join(key, "run");
        let fields = self.fields(run, &key, &["shell", "working-directory"])?;
        Ok(RunDefaults {
            shell: fields
                .get("shell")
                .map(|n| self.shell(n, &join(&key, "shell")))
                .transpose()?,
            working_directory: fields
                .get("working-directory")
                .map(|n| self.template(n, &join(&key, "working-directory"), Allow::LABEL))
                .transpose()?,
        })
    }

    fn patterns(&self, node: &Node, key: &str) -> R<Vec<Pattern>> {
        let Value::Seq(_) = node.value else {
            if matches!(node.value, Value::Scalar { .. }) && !node.is_null() {
                // GitHub accepts a single pattern as a string too.
                let text = self.string(node, key)?;
                return Pattern::new(&text)
                    .map(|p| vec![p])
                    .map_err(|m| self.err(node.pos, key, format!("bad pattern `{text}`: {m}")));
            }
            return Err(self.expected(node, key, "a list of patterns"));
        };
        let mut out = Vec::new();
        for (text, pos, item_key) in self.strings(node, key)? {
            out.push(
                Pattern::new(&text)
                    .map_err(|m| self.err(pos, &item_key, format!("bad pattern `{text}`: {m}")))?,
            );
        }
        Ok(out)
    }

    fn filter(&self, fields: &Entries<'_>, key: &str, name: &str) -> R<Option<Filter>> {
        let ignore_name = format!("{name}-ignore");
        match (fields.get(name), fields.get(&ignore_name)) {
            (Some(_), Some(ignore)) => Err(self.err(
                ignore.pos,
                &join(key, &ignore_name),
                format!("`{name}` and `{ignore_name}` cannot be used together; use `!` patterns in `{name}`"),
            )),
            (Some(only), None) => Ok(Some(Filter::Only(self.patterns(only, &join(key, name))?))),
            (None, Some(ignore)) => Ok(Some(Filter::Ignore(self.patterns(ignore, &join(key, &ignore_name))?))),
            (None, None) => Ok(None),
        }
    }

    fn on(&self, node: &Node) -> R<Triggers> {
        let not_push = |pos: Pos, key: &str, event: &str| {
            self.err(
                pos,
                key,
                format!("event `{event}` is not supported; Nimbus workflows run on `push` only"),
            )
        };
        let mut push = None;
        match &node.value {
            Value::Scalar { .. } => {
                let event = self.string(node, "on")?;
                if event != "push" {
                    return Err(not_push(node.pos, "on", &event));
                }
                push = Some(PushFilter::default());
            }
            Value::Seq(_) => {
                for (event, pos, key) in self.strings(node, "on")? {
                    if event != "push" {
                        return Err(not_push(pos, &key, &event));
                    }
                    push = Some(PushFilter::default());
                }
            }
            Value::Map(_) => {
                for (event, pos, value) in self.entries(node, "on")?.items {
                    let key = join("on", event);
                    if event != "push" {
                        return Err(not_push(pos, &key, event));
                    }
                    if value.is_null() {
                        push = Some(PushFilter::default());
                        continue;
                    }
                    let allowed = [
                        "branches",
                        "branches-ignore",
                        "tags",
                        "tags-ignore",
                        "paths",
                        "paths-ignore",
                    ];
                    let fields = self.fields(value, &key, &allowed)?;
                    push = Some(PushFilter {
                        branches: self.filter(&fields, &key, "branches")?,
                        tags: self.filter(&fields, &key, "tags")?,
                        paths: self.filter(&fields, &key, "paths")?,
                    });
                }
            }
        }
        if push.is_none() {
            return Err(self.err(node.pos, "on", "no event given; use `on: push`"));
        }
        Ok(Triggers { push })
    }

    fn matrix_value(&self, node: &Node, key: &str) -> R<String> {
        let (text, _) = match &node.value {
            Value::Scalar { .. } if !node.is_null() => self.scalar(node, key, "")?,
            _ => return Err(self.expected(node, key, "a string, number or boolean")),
        };
        if text.contains("${{") {
            return Err(self.err(node.pos, key, "expressions are not supported in a matrix"));
        }
        Ok(text.to_owned())
    }

    fn matrix_entries(&self, node: &Node, key: &str) -> R<Vec<Vec<(String, String)>>> {
        let Value::Seq(items) = &node.value else {
            return Err(self.expected(node, key, "a list of mappings"));
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let mut pairs = Vec::new();
            for (k, _, v) in self.entries(item, &item_key)?.items {
                pairs.push((k.to_owned(), self.matrix_value(v, &join(&item_key, k))?));
            }
            out.push(pairs);
        }
        Ok(out)
    }

    fn strategy(&self, node: &Node, key: &str) -> R<Strategy> {
        let fields = self.fields(node, key, &["matrix", "fail-fast", "max-parallel"])?;
        let matrix_key = join(key, "matrix");
        let Some(matrix_node) = fields.get("matrix") else {
            return Err(self.err(node.pos, &matrix_key, "`strategy` needs a `matrix`"));
        };
        let mut matrix = Matrix::default();
        let mut exclude_node = None;
        for (k, pos, v) in self.entries(matrix_node, &matrix_key)?.items {
            let k_key = join(&matrix_key, k);
            match k {
                "include" => matrix.include = self.matrix_entries(v, &k_key)?,
                "exclude" => {
                    matrix.exclude = self.matrix_entries(v, &k_key)?;
                    exclude_node = Some(v);
                }
                _ => {
                    if !is_identifier(k, true) {
                        return Err(self.err(
                            pos,
                            &k_key,
                            format!("`{k}` is not a valid matrix key"),
                        ));
                    }
                    let Value::Seq(items) = &v.value else {
                        return Err(self.expected(v, &k_key, "a list of values"));
                    };
                    if items.is_empty() {
                        return Err(self.err(
                            v.pos,
                            &k_key,
                            format!("matrix key `{k}` has no values"),
                        ));
                    }
                    let values = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.matrix_value(item, &format!("{k_key}[{i}]")))
                        .collect::<R<Vec<_>>>()?;
                    matrix.axes.push((k.to_owned(), values));
                }
            }
        }
        let exclude_items: &[Node] = match exclude_node.map(|n| &n.value) {
            Some(Value::Seq(items)) => items,
            _ => &[],
        };
        for ((i, entry), item) in matrix.exclude.iter().enumerate().zip(exclude_items) {
            if let Some((k, _)) = entry
                .iter()
                .find(|(k, _)| !matrix.axes.iter().any(|(axis, _)| axis == k))
            {
                return Err(self.err(
                    item.pos,
                    &format!("{matrix_key}.exclude[{i}].{k}"),
                    format!("`{k}` is not a key of the matrix"),
                ));
            }
        }
        if matrix.axes.is_empty() && matrix.include.is_empty() {
            return Err(self.err(matrix_node.pos, &matrix_key, "the matrix is empty"));
        }
        Ok(Strategy {
            matrix,
            fail_fast: fields
                .get("fail-fast")
                .map(|n| self.bool(n, &join(key, "fail-fast")))
                .transpose()?
                .unwrap_or(true),
            max_parallel: fields
                .get("max-parallel")
                .map(|n| self.number(n, &join(key, "max-parallel"), u32::MAX))
                .transpose()?,
        })
    }

    fn condition(&self, node: &Node, key: &str) -> R<StepIf> {
        let (text, _) = self.scalar(node, key, "a condition")?;
        let trimmed = text.trim();
        let inner = trimmed
            .strip_prefix("${{")
            .and_then(|rest| rest.strip_suffix("}}"))
            .unwrap_or(trimmed)
            .trim();
        match inner {
            "success()" => Ok(StepIf::Success),
            "failure()" => Ok(StepIf::Failure),
            "always()" => Ok(StepIf::Always),
            _ => Err(self.err(
                node.pos,
                key,
                format!("unsupported condition `{text}`: Nimbus supports only `success()`, `failure()` and `always()`"),
            )),
        }
    }

    fn step(&self, node: &Node, key: &str) -> R<StepDef> {
        let allowed = [
            "name",
            "run",
            "shell",
            "env",
            "working-directory",
            "if",
            "timeout-minutes",
        ];
        let fields = self.fields(node, key, &allowed)?;
        let Some(run) = fields.get("run") else {
            return Err(self.err(node.pos, &join(key, "run"), "a step needs `run`"));
        };
        let opt_template = |name: &str| {
            fields
                .get(name)
                .map(|n| self.template(n, &join(key, name), Allow::LABEL))
                .transpose()
        };
        Ok(StepDef {
            name: opt_template("name")?,
            run: self.template(run, &join(key, "run"), Allow::PROCESS)?,
            shell: fields
                .get("shell")
                .map(|n| self.shell(n, &join(key, "shell")))
                .transpose()?,
            env: self.env(fields.get("env"), &join(key, "env"), Allow::PROCESS)?,
            working_directory: opt_template("working-directory")?,
            condition: fields
                .get("if")
                .map(|n| self.condition(n, &join(key, "if")))
                .transpose()?
                .unwrap_or_default(),
            timeout_minutes: fields
                .get("timeout-minutes")
                .map(|n| {
                    self.number(
                        n,
                        &join(key, "timeout-minutes"),
                        self.limits.max_timeout_minutes,
                    )
                })
                .transpose()?,
        })
    }

    /// `at` is the position of the job's id, where a missing key is reported.
    fn job(&self, id: &str, at: Pos, node: &Node, key: &str) -> R<(JobDef, Vec<Listed>)> {
        let allowed = [
            "name",
            "runs-on",
            "needs",
            "env",
            "timeout-minutes",
            "strategy",
            "defaults",
            "steps",
        ];
        let fields = self.fields(node, key, &allowed)?;
        let runs_on_key = join(key, "runs-on");
        let Some(runs_on_node) = fields.get("runs-on") else {
            return Err(self.err(at, &runs_on_key, "a job needs `runs-on`"));
        };
        let runs_on = match &runs_on_node.value {
            Value::Seq(items) if items.is_empty() => {
                return Err(self.err(
                    runs_on_node.pos,
                    &runs_on_key,
                    "`runs-on` needs at least one label",
                ));
            }
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.template(item, &format!("{runs_on_key}[{i}]"), Allow::LABEL))
                .collect::<R<Vec<_>>>()?,
            Value::Map(_) => {
                return Err(self.expected(
                    runs_on_node,
                    &runs_on_key,
                    "a label or a list of labels",
                ));
            }
            Value::Scalar { .. } => {
                vec![self.template(runs_on_node, &runs_on_key, Allow::LABEL)?]
            }
        };
        let needs = fields
            .get("needs")
            .map(|n| self.strings(n, &join(key, "needs")))
            .transpose()?
            .unwrap_or_default();
        let steps_key = join(key, "steps");
        let Some(steps_node) = fields.get("steps") else {
            return Err(self.err(at, &steps_key, "a job needs `steps`"));
        };
        let Value::Seq(step_nodes) = &steps_node.value else {
            return Err(self.expected(steps_node, &steps_key, "a list of steps"));
        };
        if step_nodes.is_empty() {
            return Err(self.err(steps_node.pos, &steps_key, "a job needs at least one step"));
        }
        if step_nodes.len() > self.limits.max_steps {
            return Err(self.err(
                steps_node.pos,
                &steps_key,
                format!(
                    "job `{id}` has {} steps; the limit is {}",
                    step_nodes.len(),
                    self.limits.max_steps
                ),
            ));
        }
        let steps = step_nodes
            .iter()
            .enumerate()
            .map(|(i, n)| self.step(n, &format!("{steps_key}[{i}]")))
            .collect::<R<Vec<_>>>()?;
        let job = JobDef {
            id: id.to_owned(),
            name: fields
                .get("name")
                .map(|n| self.template(n, &join(key, "name"), Allow::LABEL))
                .transpose()?,
            runs_on,
            needs: Vec::new(),
            env: self.env(fields.get("env"), &join(key, "env"), Allow::PROCESS)?,
            timeout_minutes: fields
                .get("timeout-minutes")
                .map(|n| {
                    self.number(
                        n,
                        &join(key, "timeout-minutes"),
                        self.limits.max_timeout_minutes,
                    )
                })
                .transpose()?
                .unwrap_or(DEFAULT_TIMEOUT_MINUTES.min(self.limits.max_timeout_minutes)),
            strategy: fields
                .get("strategy")
                .map(|n| self.strategy(n, &join(key, "strategy")))
                .transpose()?,
            defaults: self.defaults(fields.get("defaults"), &join(key, "defaults"))?,
            steps,
        };
        Ok((job, needs))
    }

    /// Checks that every `matrix.*` and `env.*` reference of a template names something defined.
    fn check_refs(&self, template: &Template, job: &JobDef, env: &BTreeSet<&str>) -> R<()> {
        for (expr, at) in template.expressions() {
            match expr {
                Expr::Matrix(k) => {
                    let Some(strategy) = &job.strategy else {
                        return Err(self.err(
                            at,
                            &template.key,
                            format!("`matrix.{k}`: job `{}` has no matrix", job.id),
                        ));
                    };
                    if !strategy.matrix.keys().any(|key| key == k) {
                        return Err(self.err(
                            at,
                            &template.key,
                            format!(
                                "`matrix.{k}` is not a key of the matrix of job `{}`",
                                job.id
                            ),
                        ));
                    }
                }
                Expr::Env(k) if !env.contains(k.as_str()) => {
                    return Err(self.err(
                        at,
                        &template.key,
                        format!("`env.{k}` is not defined here"),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_job_refs(&self, wf: &Workflow, job: &JobDef) -> R<()> {
        let wf_env: BTreeSet<&str> = wf.env_templates.keys().map(String::as_str).collect();
        let job_env: BTreeSet<&str> = wf_env
            .iter()
            .copied()
            .chain(job.env.keys().map(String::as_str))
            .collect();
        for t in job.env.values() {
            self.check_refs(t, job, &wf_env)?;
        }
        let job_level = job
            .name
            .iter()
            .chain(&job.runs_on)
            .chain(&job.defaults.working_directory);
        for t in job_level.chain(&wf.defaults.working_directory) {
            self.check_refs(t, job, &job_env)?;
        }
        for step in &job.steps {
            for t in step.env.values() {
                self.check_refs(t, job, &job_env)?;
            }
            let step_env: BTreeSet<&str> = job_env
                .iter()
                .copied()
                .chain(step.env.keys().map(String::as_str))
                .collect();
            for t in step
                .name
                .iter()
                .chain([&step.run])
                .chain(&step.working_directory)
            {
                self.check_refs(t, job, &step_env)?;
            }
        }
        Ok(())
    }
}

/// The file name without directories and extension: `.nimbus/workflows/ci.yml` → `ci`.
fn stem(file: &str) -> &str {
    let base = file.rsplit('/').next().unwrap_or(file);
    match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => base,
    }
}

/// Parses one workflow file. `file` is the path shown in errors (e.g. `.nimbus/workflows/ci.yml`).
pub fn parse(file: &str, source: &str, limits: &Limits) -> Result<Workflow, WorkflowError> {
    if source.len() > limits.max_file_bytes {
        return Err(WorkflowError::at(
            file,
            None,
            "",
            format!(
                "the file is {} bytes; the limit is {} bytes",
                source.len(),
                limits.max_file_bytes
            ),
        ));
    }
    let root = yaml::load(source)
        .map_err(|e| WorkflowError::at(file, Some(e.pos), "", e.message))?
        .ok_or_else(|| WorkflowError::at(file, None, "", "the workflow is empty"))?;
    let reader = Reader {
        file,
        lines: source.lines().collect(),
        limits,
    };
    if !matches!(root.value, Value::Map(_)) {
        return Err(reader.err(
            root.pos,
            "",
            "a workflow must be a mapping with `on` and `jobs`",
        ));
    }
    let fields = reader.fields(
        &root,
        "",
        &["name", "on", "env", "defaults", "concurrency", "jobs"],
    )?;
    let name = match fields.get("name") {
        Some(node) => reader.string(node, "name")?,
        None => stem(file).to_owned(),
    };
    let on = match fields.get("on") {
        Some(node) => reader.on(node)?,
        None => return Err(reader.err(root.pos, "on", "a workflow needs `on`")),
    };
    let env_templates = reader.env(fields.get("env"), "env", Allow::WORKFLOW_ENV)?;
    let defaults = reader.defaults(fields.get("defaults"), "defaults")?;
    let (concurrency, concurrency_group) = match fields.get("concurrency") {
        None => (None, None),
        Some(
            node @ Node {
                value: Value::Scalar { .. },
                ..
            },
        ) => {
            let group = reader.template(node, "concurrency", Allow::WORKFLOW)?;
            (
                Some(Concurrency {
                    group: group.as_str().to_owned(),
                    cancel_in_progress: false,
                }),
                Some(group),
            )
        }
        Some(node) => {
            let c = reader.fields(node, "concurrency", &["group", "cancel-in-progress"])?;
            let Some(group_node) = c.get("group") else {
                return Err(reader.err(
                    node.pos,
                    "concurrency.group",
                    "`concurrency` needs a `group`",
                ));
            };
            let group = reader.template(group_node, "concurrency.group", Allow::WORKFLOW)?;
            let cancel_in_progress = c
                .get("cancel-in-progress")
                .map(|n| reader.bool(n, "concurrency.cancel-in-progress"))
                .transpose()?
                .unwrap_or(false);
            (
                Some(Concurrency {
                    group: group.as_str().to_owned(),
                    cancel_in_progress,
                }),
                Some(group),
            )
        }
    };
    let Some(jobs_node) = fields.get("jobs") else {
        return Err(reader.err(root.pos, "jobs", "a workflow needs `jobs`"));
    };
    let job_entries = reader.entries(jobs_node, "jobs")?;
    if job_entries.items.is_empty() {
        return Err(reader.err(jobs_node.pos, "jobs", "a workflow needs at least one job"));
    }
    let mut jobs = Vec::new();
    let mut needs_of = Vec::new();
    for (id, pos, node) in &job_entries.items {
        let key = join("jobs", id);
        if !is_identifier(id, true) {
            return Err(reader.err(
                *pos,
                &key,
                format!("`{id}` is not a valid job id (letters, digits, `_` and `-`, not starting with a digit or `-`)"),
            ));
        }
        let (job, needs) = reader.job(id, *pos, node, &key)?;
        jobs.push(job);
        needs_of.push(needs);
    }
    for (idx, needs) in needs_of.into_iter().enumerate() {
        for (needed, pos, key) in needs {
            if needed == jobs[idx].id {
                return Err(reader.err(pos, &key, format!("job `{needed}` needs itself")));
            }
            if !jobs.iter().any(|j| j.id == needed) {
                return Err(reader.err(pos, &key, format!("job `{needed}` does not exist")));
            }
            if !jobs[idx].needs.contains(&needed) {
                jobs[idx].needs.push(needed);
            }
        }
    }
    if let Some(cycle) = find_cycle(&jobs) {
        let first = &jobs[cycle[0]];
        let path: Vec<&str> = cycle
            .iter()
            .chain([&cycle[0]])
            .map(|&i| jobs[i].id.as_str())
            .collect();
        let needs_node = job_entries
            .get(&first.id)
            .and_then(|job| job.entry("needs"))
            .map(|(_, value)| value.pos);
        return Err(WorkflowError::at(
            file,
            needs_node,
            &format!("jobs.{}.needs", first.id),
            format!("jobs need each other in a cycle: {}", path.join(" -> ")),
        ));
    }
    let wf = Workflow {
        file: file.to_owned(),
        name,
        on,
        env: env_templates
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
            .collect(),
        concurrency,
        defaults,
        jobs,
        env_templates,
        concurrency_group,
    };
    let mut total = 0usize;
    for (job, (_, _, node)) in wf.jobs.iter().zip(&job_entries.items) {
        reader.check_job_refs(&wf, job)?;
        let count = match &job.strategy {
            None => 1,
            Some(strategy) => {
                let matrix_pos = node
                    .entry("strategy")
                    .and_then(|(_, strategy)| strategy.entry("matrix"))
                    .map_or(node.pos, |(key, _)| key.pos);
                let key = format!("jobs.{}.strategy.matrix", job.id);
                match strategy.matrix.combinations(limits.max_matrix) {
                    Ok(c) if c.is_empty() => {
                        return Err(reader.err(
                            matrix_pos,
                            &key,
                            format!("the matrix of job `{}` has no combinations", job.id),
                        ));
                    }
                    Ok(c) => c.len(),
                    Err(n) => {
                        return Err(reader.err(
                            matrix_pos,
                            &key,
                            format!(
                                "matrix of job `{}` expands to {n} combinations; the limit is {}",
                                job.id, limits.max_matrix
                            ),
                        ));
                    }
                }
            }
        };
        total += count;
    }
    if total > limits.max_jobs {
        return Err(reader.err(
            jobs_node.pos,
            "jobs",
            format!(
                "the workflow expands to {total} jobs; the limit is {}",
                limits.max_jobs
            ),
        ));
    }
    Ok(wf)
}

/// A cycle in `needs`, as job indexes in dependency order, if there is one.
fn find_cycle(jobs: &[JobDef]) -> Option<Vec<usize>> {
    let index = |id: &str| jobs.iter().position(|j| j.id == id);
    // 0 = unseen, 1 = on the path, 2 = done
    let mut state = vec![0u8; jobs.len()];
    for start in 0..jobs.len() {
        if state[start] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (job, ref mut next)) = path.last_mut() {
            match jobs[job].needs.get(*next) {
                Some(needed) => {
                    *next += 1;
                    let Some(n) = index(needed) else { continue };
                    match state[n] {
                        0 => {
                            state[n] = 1;
                            path.push((n, 0));
                        }
                        1 => {
                            let from = path.iter().position(|(j, _)| *j == n).unwrap_or(0);
                            return Some(path[from..].iter().map(|(j, _)| *j).collect());
                        }
                        _ => {}
                    }
                }
                None => {
                    state[job] = 2;
                    path.pop();
                }
            }
        }
    }
    None
}
