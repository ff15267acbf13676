//! An axum app served on its own thread and runtime, for the stateful fakes that stand behind
//! Prism (GitLab, GitHub, Forgejo, Hetzner): tests stay synchronous, and dropping the handle
//! stops the server and joins its thread.

use std::net::TcpListener;

/// A running app; stops when dropped.
pub struct Served {
    port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    /// Serves `app` on `listener` (bound by the caller, which may need the port first) from a
    /// thread called `name`.
    pub fn start(name: &str, listener: TcpListener, app: axum::Router) -> std::io::Result<Served> {
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let what = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|err| panic!("a runtime for {what}: {err}"));
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("hand the listener to tokio");
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })?;
        Ok(Served {
            port,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
