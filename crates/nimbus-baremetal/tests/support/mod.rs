//! A tiny HTTP/1.1 responder for what no real BMC does on demand: answer garbage, never answer,
//! or link elsewhere. Also serves the "ISO" a Redfish BMC downloads for virtual media.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Canned {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
}

/// Answers every request with `status` and `body`, or holds the connection open without a
/// word when `body` is `None`.
pub fn serve(status: u16, body: Option<&'static str>) -> Canned {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            match body {
                Some(body) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                None => held.push(stream),
            }
        }
    });
    Canned { port, requests }
}
