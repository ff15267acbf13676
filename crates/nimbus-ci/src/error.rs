//! The one error type of the crate: a problem in a workflow file, located by file, line, column
//! and the dotted key path of the offending value.

use std::fmt;

/// A workflow that cannot be parsed, triggered or planned.
///
/// `line` and `column` are 1-based and point at the offending key or value (for an expression,
/// at its `${{`). `key` is the dotted path from the document root, with 0-based list indexes:
/// `jobs.build.steps[2].uses`. Displayed as `{file}:{line}:{column}: {key}: {message}`; missing
/// parts are left out with their separators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Located(.file, *.line, *.column, .key, .message))]
pub struct WorkflowError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub key: String,
    pub message: String,
}

struct Located<'a>(&'a str, Option<usize>, Option<usize>, &'a str, &'a str);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Located(file, line, column, key, message) = *self;
        f.write_str(file)?;
        if let Some(line) = line {
            write!(f, ":{line}")?;
            if let Some(column) = column {
                write!(f, ":{column}")?;
            }
        }
        if !key.is_empty() {
            write!(f, ": {key}")?;
        }
        write!(f, ": {message}")
    }
}

/// A 1-based line and column in a workflow file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl WorkflowError {
    pub(crate) fn at(file: &str, pos: Option<Pos>, key: &str, message: impl Into<String>) -> Self {
        WorkflowError {
            file: file.to_owned(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_leaves_out_missing_parts() {
        let mut err = WorkflowError {
            file: "ci.yml".into(),
            line: Some(3),
            column: Some(5),
            key: "jobs.build".into(),
            message: "boom".into(),
        };
        assert_eq!(err.to_string(), "ci.yml:3:5: jobs.build: boom");
        err.column = None;
        assert_eq!(err.to_string(), "ci.yml:3: jobs.build: boom");
        err.line = None;
        err.column = Some(5);
        assert_eq!(err.to_string(), "ci.yml: jobs.build: boom");
        err.key.clear();
        assert_eq!(err.to_string(), "ci.yml: boom");
    }
}
