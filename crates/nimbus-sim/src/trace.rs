//! CI job traces: `submitted_at_s,job_id,labels,duration_s`, one job a line, labels
//! `;`-joined, `t = 0` on a Monday 00:00 UTC.

use std::path::Path;

/// One job of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// Seconds since the trace's `t = 0`.
    pub submitted_at: f64,
    pub id: String,
    pub labels: Vec<String>,
    /// Run time once the job has a runner; the policy never sees it before the job ends.
    pub duration: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
}

const HEADER: [&str; 4] = ["submitted_at_s", "job_id", "labels", "duration_s"];

pub fn load(path: &Path) -> Result<Vec<Job>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// Parses a whole trace; the error names the first bad line (1-based, the header is line 1).
pub fn parse(text: &str) -> Result<Vec<Job>, Error> {
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = match lines.next() {
        Some((_, header)) => header.trim().split(',').map(str::trim).collect(),
        None => Vec::new(),
    };
    if header != HEADER {
        return Err(Error::Line {
            line: 1,
            message: format!("expected the header {:?}", HEADER.join(",")),
        });
    }
    let mut jobs = Vec::new();
    for (idx, line) in lines {
        let line_no = idx + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| Error::Line {
            line: line_no,
            message,
        };
        let fields: Vec<&str> = line.split(',').collect();
        let [submitted_at, id, labels, duration] = fields[..] else {
            return Err(bad(format!(
                "expected 4 comma-separated fields, found {}",
                fields.len()
            )));
        };
        let seconds = |name: &str, value: &str| -> Result<f64, Error> {
            match value.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
                _ => Err(bad(format!(
                    "{name} {value:?} is not a non-negative number of seconds"
                ))),
            }
        };
        let submitted_at = seconds("submitted_at_s", submitted_at)?;
        let duration = seconds("duration_s", duration)?;
        let id = id.trim();
        if id.is_empty() {
            return Err(bad("empty job_id".to_owned()));
        }
        let labels: Vec<String> = labels
            .split(';')
            .map(|label| label.trim().to_lowercase())
            .filter(|label| !label.is_empty())
            .collect();
        if labels.is_empty() {
            return Err(bad(format!("job {id} asks for no labels")));
        }
        jobs.push(Job {
            submitted_at,
            id: id.to_owned(),
            labels,
            duration,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: &str) {
        match parse(text) {
            Ok(jobs) => assert_eq!(format!("{} jobs", jobs.len()), expect),
            Err(err) => assert_eq!(err.to_string(), expect),
        }
    }

    #[test]
    fn parses_and_names_bad_lines() {
        let head = "submitted_at_s,job_id,labels,duration_s\n";
        check(
            &format!("{head}1.5,j1,self-hosted;linux,20\n\n3,j2,a,0\n"),
            "2 jobs",
        );
        check(
            "",
            "line 1: expected the header \"submitted_at_s,job_id,labels,duration_s\"",
        );
        check(
            &format!("{head}1,j1,a,2\n1,j2,a\n"),
            "line 3: expected 4 comma-separated fields, found 3",
        );
        check(
            &format!("{head}x,j1,a,2\n"),
            "line 2: submitted_at_s \"x\" is not a non-negative number of seconds",
        );
        check(
            &format!("{head}1,j1,a,-2\n"),
            "line 2: duration_s \"-2\" is not a non-negative number of seconds",
        );
        check(
            &format!("{head}1,j1,,2\n"),
            "line 2: job j1 asks for no labels",
        );
        let jobs = parse(&format!(
            "{head}24505.453,j0000001,self-hosted;Linux;x64,286\n"
        ))
        .unwrap();
        assert_eq!(
            jobs[0],
            Job {
                submitted_at: 24505.453,
                id: "j0000001".into(),
                labels: vec!["self-hosted".into(), "linux".into(), "x64".into()],
                duration: 286.0,
            }
        );
    }
}
