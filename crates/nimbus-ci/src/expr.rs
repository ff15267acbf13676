//! `${{ ... }}` expressions: the few references Nimbus supports, found and checked at parse time,
//! filled in by [`crate::plan_run`] (all but secrets) and [`crate::render_secrets`] (secrets).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::error::{Pos, WorkflowError};

/// A context value of the run that expressions may read as `github.<field>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GithubField {
    Sha,
    Ref,
    RefName,
    Repository,
    RunId,
    Actor,
}

impl GithubField {
    const ALL: [(&'static str, GithubField); 6] = [
        ("sha", GithubField::Sha),
        ("ref", GithubField::Ref),
        ("ref_name", GithubField::RefName),
        ("repository", GithubField::Repository),
        ("run_id", GithubField::RunId),
        ("actor", GithubField::Actor),
    ];

    pub fn name(self) -> &'static str {
        GithubField::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("", |(n, _)| n)
    }
}

/// One supported reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Matrix(String),
    Env(String),
    Secret(String),
    Github(GithubField),
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Matrix(k) => write!(f, "${{{{ matrix.{k} }}}}"),
            Expr::Env(k) => write!(f, "${{{{ env.{k} }}}}"),
            Expr::Secret(k) => write!(f, "${{{{ secrets.{k} }}}}"),
            Expr::Github(field) => write!(f, "${{{{ github.{} }}}}", field.name()),
        }
    }
}

/// Which contexts a field may read. Secrets only where their value goes to the process
/// (`env` values and `run`), never into names, labels or groups that are shown or stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allow {
    pub matrix: bool,
    pub env: bool,
    pub secrets: bool,
}

impl Allow {
    /// Workflow-level `env` values.
    pub const WORKFLOW_ENV: Allow = Allow {
        matrix: false,
        env: false,
        secrets: true,
    };
    /// `concurrency.group`.
    pub const WORKFLOW: Allow = Allow {
        matrix: false,
        env: false,
        secrets: false,
    };
    /// Job name, `runs-on`, `working-directory`, step names.
    pub const LABEL: Allow = Allow {
        matrix: true,
        env: true,
        secrets: false,
    };
    /// Job and step `env` values, `run`.
    pub const PROCESS: Allow = Allow {
        matrix: true,
        env: true,
        secrets: true,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Expr(Expr, Pos),
}

/// A string value of the workflow with its expressions parsed and located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
    pub(crate) key: String,
    pub(crate) pos: Pos,
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Where the characters of a scalar value sit in the file, to locate an expression inside it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Layout {
    /// Plain or quoted text on one line; `offset` is 1 for the opening quote.
    Inline { offset: usize },
    /// A literal block (`|`): value lines are file lines at a fixed indentation.
    Literal,
    /// Folded or multi-line flow text: only the start of the value is known.
    Folded,
}

/// Finds `${{ ... }}` in `text` and returns (byte start, byte end, inner text) of each, or the
/// byte start of an unclosed one.
fn scan(text: &str) -> Result<Vec<(usize, usize, &str)>, usize> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(rel) = text[from..].find("${{") {
        let start = from + rel;
        let inner_start = start + 3;
        let Some(len) = text[inner_start..].find("}}") else {
            return Err(start);
        };
        let end = inner_start + len + 2;
        found.push((start, end, &text[inner_start..inner_start + len]));
        from = end;
    }
    Ok(found)
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

const SUPPORTED: &str = "Nimbus supports only `matrix.*`, `env.*`, `secrets.*` and \
                         `github.sha|ref|ref_name|repository|run_id|actor`";

fn parse_expr(inner: &str) -> Result<Expr, String> {
    let shown = format!("`${{{{{inner}}}}}`");
    let unsupported = || format!("unsupported expression {shown}: {SUPPORTED}");
    let Some((context, name)) = inner.trim().split_once('.') else {
        return Err(unsupported());
    };
    if !is_name(name) {
        return Err(unsupported());
    }
    match context {
        "matrix" => Ok(Expr::Matrix(name.to_owned())),
        "env" => Ok(Expr::Env(name.to_owned())),
        "secrets" => Ok(Expr::Secret(name.to_owned())),
        "github" => GithubField::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| Expr::Github(*f))
            .ok_or_else(unsupported),
        _ => Err(unsupported()),
    }
}

impl Template {
    /// Parses `source`, a value found at `pos` under `key`; `lines` is the file, to place an
    /// expression of a literal block on its own line.
    pub(crate) fn parse(
        file: &str,
        key: &str,
        source: String,
        pos: Pos,
        layout: Layout,
        allow: Allow,
    ) -> Result<Template, WorkflowError> {
        let locate = |byte: usize| -> Pos {
            let before = &source[..byte];
            match layout {
                Layout::Inline { offset } => Pos {
                    line: pos.line,
                    column: pos.column + offset + before.chars().count(),
                },
                Layout::Literal => match before.rfind('\n') {
                    None => Pos {
                        line: pos.line,
                        column: pos.column + before.chars().count(),
                    },
                    Some(nl) => Pos {
                        line: pos.line + before.matches('\n').count(),
                        column: pos.column + before[nl + 1..].chars().count(),
                    },
                },
                Layout::Folded => pos,
            }
        };
        let found = scan(&source).map_err(|start| {
            WorkflowError::at(
                file,
                Some(locate(start)),
                key,
                "`${{` is not closed by `}}`",
            )
        })?;
        let mut parts = Vec::new();
        let mut last = 0;
        for (start, end, inner) in found {
            let at = locate(start);
            let expr = parse_expr(inner).map_err(|m| WorkflowError::at(file, Some(at), key, m))?;
            let refused = match &expr {
                Expr::Matrix(_) if !allow.matrix => Some("`matrix` is not available here"),
                Expr::Env(_) if !allow.env => Some("`env` is not available here"),
                Expr::Secret(_) if !allow.secrets => {
                    Some("`secrets` are not available here; use them in `env` values or `run`")
                }
                _ => None,
            };
            if let Some(message) = refused {
                return Err(WorkflowError::at(file, Some(at), key, message));
            }
            if start > last {
                parts.push(Part::Text(source[last..start].to_owned()));
            }
            parts.push(Part::Expr(expr, at));
            last = end;
        }
        if last < source.len() {
            parts.push(Part::Text(source[last..].to_owned()));
        }
        Ok(Template {
            source,
            parts,
            key: key.to_owned(),
            pos,
        })
    }

    /// The value as written in the file.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The expressions in the value, with their positions.
    pub fn expressions(&self) -> impl Iterator<Item = (&Expr, Pos)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e, at) => Some((e, *at)),
            Part::Text(_) => None,
        })
    }

    /// Fills in every expression but secrets, which stay as `${{ secrets.NAME }}` and are added
    /// to `secrets`. A value from the run's context that looks like an expression is refused, so
    /// that a branch name can never smuggle a secret reference into a step.
    pub(crate) fn render(
        &self,
        file: &str,
        vars: &Vars<'_>,
        secrets: &mut BTreeSet<String>,
    ) -> Result<String, WorkflowError> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(Expr::Secret(name), _) => {
                    secrets.insert(name.clone());
                    out.push_str(&Expr::Secret(name.clone()).to_string());
                }
                Part::Expr(Expr::Matrix(k), _) => {
                    out.push_str(vars.matrix.get(k).map_or("", String::as_str))
                }
                Part::Expr(Expr::Env(k), at) => match vars.env.get(k) {
                    Some(v) => out.push_str(v),
                    None => {
                        return Err(WorkflowError::at(
                            file,
                            Some(*at),
                            &self.key,
                            format!("`env.{k}` is not defined"),
                        ));
                    }
                },
                Part::Expr(Expr::Github(field), at) => {
                    let value = vars.github(*field);
                    if value.contains("${{") {
                        return Err(WorkflowError::at(
                            file,
                            Some(*at),
                            &self.key,
                            format!(
                                "`github.{}` contains `${{{{` and cannot be used in an expression",
                                field.name()
                            ),
                        ));
                    }
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }
}

/// What expressions read while a job is planned.
pub(crate) struct Vars<'a> {
    pub matrix: &'a BTreeMap<String, String>,
    pub env: &'a BTreeMap<String, String>,
    pub context: &'a crate::plan::Context,
}

impl Vars<'_> {
    fn github(&self, field: GithubField) -> &str {
        let c = self.context;
        match field {
            GithubField::Sha => &c.sha,
            GithubField::Ref => &c.git_ref,
            GithubField::RefName => &c.ref_name,
            GithubField::Repository => &c.repository,
            GithubField::RunId => &c.run_id,
            GithubField::Actor => &c.actor,
        }
    }
}

/// Fills `${{ secrets.NAME }}` references in `text` with their values; an unknown name is the
/// error. Meant for the output of [`crate::plan_run`] at execution time; other expressions (there
/// are none left in a plan) stay as they are.
pub fn render_secrets(text: &str, secrets: &BTreeMap<String, String>) -> Result<String, String> {
    let Ok(found) = scan(text) else {
        return Ok(text.to_owned());
    };
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end, inner) in found {
        if let Ok(Expr::Secret(name)) = parse_expr(inner) {
            let value = secrets.get(&name).ok_or(name)?;
            out.push_str(&text[last..start]);
            out.push_str(value);
            last = end;
        }
    }
    out.push_str(&text[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(source: &str, layout: Layout, allow: Allow) -> Result<Template, String> {
        Template::parse(
            "ci.yml",
            "k",
            source.to_owned(),
            Pos { line: 3, column: 7 },
            layout,
            allow,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn finds_and_locates_expressions() {
        let t = parse(
            "a ${{ matrix.os }} b ${{github.sha}}",
            Layout::Inline { offset: 0 },
            Allow::PROCESS,
        )
        .unwrap();
        let found: Vec<_> = t
            .expressions()
            .map(|(e, p)| (e.to_string(), p.column))
            .collect();
        assert_eq!(
            found,
            [
                ("${{ matrix.os }}".to_owned(), 9),
                ("${{ github.sha }}".to_owned(), 28)
            ]
        );
        let t = parse(
            "echo 1\n  echo ${{ env.X }}\n",
            Layout::Literal,
            Allow::PROCESS,
        )
        .unwrap();
        let (_, at) = t.expressions().next().unwrap();
        assert_eq!(
            at,
            Pos {
                line: 4,
                column: 14
            }
        );
    }

    #[test]
    fn refuses_what_is_not_supported() {
        let inline = Layout::Inline { offset: 1 };
        let e = |s: &str| parse(s, inline, Allow::PROCESS).unwrap_err();
        assert_eq!(
            e("x ${{ github.event.head_commit }}"),
            "ci.yml:3:10: k: unsupported expression `${{ github.event.head_commit }}`: Nimbus supports only \
             `matrix.*`, `env.*`, `secrets.*` and `github.sha|ref|ref_name|repository|run_id|actor`"
        );
        assert!(
            e("${{ toJSON(matrix) }}").contains("unsupported expression `${{ toJSON(matrix) }}`")
        );
        assert!(e("${{ matrix.os == 'linux' }}").contains("unsupported expression"));
        assert!(e("${{ vars.X }}").contains("unsupported expression"));
        assert!(e("${{ matrix['os'] }}").contains("unsupported expression"));
        assert_eq!(
            e("echo ${{ matrix.os"),
            "ci.yml:3:13: k: `${{` is not closed by `}}`"
        );
        assert_eq!(
            parse("${{ secrets.T }}", inline, Allow::LABEL).unwrap_err(),
            "ci.yml:3:8: k: `secrets` are not available here; use them in `env` values or `run`"
        );
        assert_eq!(
            parse("${{ env.A }}", inline, Allow::WORKFLOW_ENV).unwrap_err(),
            "ci.yml:3:8: k: `env` is not available here"
        );
    }

    #[test]
    fn secrets_are_filled_only_at_execution() {
        let secrets = BTreeMap::from([("TOKEN".to_owned(), "s3cr3t".to_owned())]);
        assert_eq!(
            render_secrets("a ${{ secrets.TOKEN }} b ${{secrets.TOKEN}}", &secrets).unwrap(),
            "a s3cr3t b s3cr3t"
        );
        assert_eq!(
            render_secrets("${{ secrets.OTHER }}", &secrets).unwrap_err(),
            "OTHER"
        );
        assert_eq!(
            render_secrets("no refs ${{ matrix.x }}", &secrets).unwrap(),
            "no refs ${{ matrix.x }}"
        );
    }
}
