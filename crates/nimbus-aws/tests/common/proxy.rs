//! A small HTTP/1.1 proxy in front of moto that injects what moto never does by itself:
//! throttling, 5xx, capacity and authentication errors, lost responses, and a "crash" after the
//! n-th request that changes something (the proxy plays dead from then on, like a killed daemon).
//!
//! One request per connection: each response gets `Connection: close`, so the client never
//! reuses a connection the proxy is about to drop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with an EC2 error document without forwarding: EC2 did nothing.
    Error { status: u16, code: &'static str },
    /// Answer with a bare status and an HTML body (no EC2 error code), without forwarding.
    Status(u16),
    /// Forward to moto, then throw its answer away and send this status: the request took
    /// effect but the caller cannot know.
    StatusAfterForward(u16),
}

#[derive(Clone, Debug)]
pub struct Rule {
    /// EC2 action (`RunInstances`), or `*` for any.
    pub action: String,
    /// Only requests whose form body contains this (e.g. `AvailabilityZone=us-east-1a`).
    pub body_contains: Option<String>,
    /// How many matching requests get the fault (`usize::MAX`: all).
    pub times: usize,
    pub fault: Fault,
}

impl Rule {
    pub fn new(action: &str, times: usize, fault: Fault) -> Self {
        Rule {
            action: action.to_owned(),
            body_contains: None,
            times,
            fault,
        }
    }

    pub fn when_body_contains(mut self, needle: &str) -> Self {
        self.body_contains = Some(needle.to_owned());
        self
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub action: String,
    /// The decoded form body.
    pub body: String,
    /// Whether it reached moto.
    pub forwarded: bool,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
    /// Crash after this many forwarded mutating requests (the last one's answer is lost).
    crash_after: Option<usize>,
    mutations: usize,
    dead: bool,
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, upstream_port, state).await;
                });
            }
        });
        FaultProxy { addr, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add(&self, rule: Rule) {
        self.state.lock().unwrap().rules.push(rule);
    }

    pub fn clear(&self) {
        let mut state = self.state.lock().unwrap();
        state.rules.clear();
        state.crash_after = None;
        state.mutations = 0;
        state.dead = false;
    }

    /// Play dead once `n` mutating requests went through (n = 0: before the first one).
    pub fn crash_after_mutations(&self, n: usize) {
        let mut state = self.state.lock().unwrap();
        state.crash_after = Some(n);
        state.mutations = 0;
        state.dead = false;
    }

    pub fn is_dead(&self) -> bool {
        self.state.lock().unwrap().dead
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn seen_action(&self, action: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.action == action)
            .collect()
    }
}

enum Decision {
    Forward,
    ForwardThenLose,
    InjectError { status: u16, code: &'static str },
    InjectStatus(u16),
    ForwardThenReplace(u16),
    Drop,
}

fn decide(state: &mut State, action: &str, body: &str) -> Decision {
    if state.dead {
        return Decision::Drop;
    }
    let mutating = !action.starts_with("Describe");
    if mutating && let Some(limit) = state.crash_after {
        if state.mutations >= limit {
            state.dead = true;
            return Decision::Drop;
        }
        state.mutations += 1;
        if state.mutations == limit {
            state.dead = true;
            return Decision::ForwardThenLose;
        }
    }
    for rule in state.rules.iter_mut() {
        let matches = (rule.action == "*" || rule.action == action)
            && rule
                .body_contains
                .as_ref()
                .is_none_or(|needle| body.contains(needle.as_str()));
        if matches && rule.times > 0 {
            if rule.times != usize::MAX {
                rule.times -= 1;
            }
            return match rule.fault {
                Fault::Error { status, code } => Decision::InjectError { status, code },
                Fault::Status(status) => Decision::InjectStatus(status),
                Fault::StatusAfterForward(status) => Decision::ForwardThenReplace(status),
            };
        }
    }
    Decision::Forward
}

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, body)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn form_decode(body: &str) -> String {
    let mut out = Vec::new();
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                if let Ok(byte) = u8::from_str_radix(&body[i + 1..i + 3], 16) {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Drops `Connection` headers and asks for the connection to be closed.
fn close_connection(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| {
            let name = line.split(':').next().unwrap_or("").trim();
            !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive")
        })
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}

fn error_response(status: u16, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>injected by the nimbus fault proxy</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
    );
    format!(
        "HTTP/1.1 {status} Injected\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn status_response(status: u16) -> Vec<u8> {
    let body = "<html><body>upstream trouble</body></html>";
    format!(
        "HTTP/1.1 {status} Injected\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn forward(upstream_port: u16, head: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    upstream
        .write_all(close_connection(head).as_bytes())
        .await?;
    upstream.write_all(body).await?;
    let mut response = Vec::new();
    upstream.read_to_end(&mut response).await?;
    let Some(head_end) = find(&response, b"\r\n\r\n").map(|pos| pos + 4) else {
        return Ok(response);
    };
    let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
    let mut out = close_connection(&head).into_bytes();
    out.extend_from_slice(&response[head_end..]);
    Ok(out)
}

async fn serve(
    mut stream: TcpStream,
    upstream_port: u16,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let Some((head, body)) = read_request(&mut stream).await? else {
        return Ok(());
    };
    let form = form_decode(&String::from_utf8_lossy(&body));
    let action = form
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or("")
        .to_owned();
    let decision = {
        let mut state = state.lock().unwrap();
        let decision = decide(&mut state, &action, &form);
        let forwarded = matches!(
            decision,
            Decision::Forward | Decision::ForwardThenLose | Decision::ForwardThenReplace(_)
        );
        state.seen.push(Seen {
            action: action.clone(),
            body: form.clone(),
            forwarded,
        });
        decision
    };
    match decision {
        Decision::Forward => {
            let response = forward(upstream_port, &head, &body).await?;
            stream.write_all(&response).await?;
        }
        Decision::ForwardThenLose => {
            forward(upstream_port, &head, &body).await?;
            // The answer is lost: the connection just closes.
        }
        Decision::ForwardThenReplace(status) => {
            forward(upstream_port, &head, &body).await?;
            stream.write_all(&status_response(status)).await?;
        }
        Decision::InjectError { status, code } => {
            stream.write_all(&error_response(status, code)).await?;
        }
        Decision::InjectStatus(status) => {
            stream.write_all(&status_response(status)).await?;
        }
        Decision::Drop => {}
    }
    stream.shutdown().await
}
