//! Faults the stateful fakes (`hetzner`, `gitlab`) answer with instead of (or after) doing what
//! was asked.

pub use axum::http::Method;

/// A fault the fake answers with instead of (or after) doing what was asked.
#[derive(Clone, Debug)]
pub struct Fault {
    /// `None`: any method.
    pub method: Option<Method>,
    /// The request path starts with this (`/servers`, `/actions`).
    pub path_prefix: String,
    pub status: u16,
    /// The vendor's error code (`rate_limit_exceeded`, `service_error`, `unauthorized`…).
    pub code: String,
    /// Apply the request first, then answer with the fault (a lost response).
    pub after_effect: bool,
    /// How many matching requests get the fault.
    pub times: u32,
}

impl Fault {
    pub fn new(method: Option<Method>, path_prefix: &str, status: u16, code: &str) -> Self {
        Fault {
            method,
            path_prefix: path_prefix.to_owned(),
            status,
            code: code.to_owned(),
            after_effect: false,
            times: 1,
        }
    }

    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }

    pub fn after_effect(mut self) -> Self {
        self.after_effect = true;
        self
    }
}
