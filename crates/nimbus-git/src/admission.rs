//! Admission control for pack work: a global and a per-repository limit on concurrent
//! `upload-pack`/`receive-pack` children, a bounded wait queue, then 429 with Retry-After.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::error::ApiError;

pub struct Admission {
    global: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
    timeout: Duration,
}

/// Held for as long as a pack child runs.
pub struct PackPermit {
    _global: OwnedSemaphorePermit,
    _repo: OwnedSemaphorePermit,
}

const RETRY_AFTER_SECS: u64 = 5;

impl Admission {
    pub fn new(limits: &Limits) -> Admission {
        Admission {
            global: Arc::new(Semaphore::new(limits.max_pack_jobs)),
            waiting: AtomicUsize::new(0),
            queue: limits.pack_queue,
            timeout: limits.pack_queue_timeout,
        }
    }

    pub async fn acquire(&self, repo_slots: &Arc<Semaphore>) -> Result<PackPermit, ApiError> {
        if let Ok(repo) = repo_slots.clone().try_acquire_owned() {
            if let Ok(global) = self.global.clone().try_acquire_owned() {
                return Ok(PackPermit {
                    _global: global,
                    _repo: repo,
                });
            }
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("pack queue full, refusing request");
            return Err(ApiError::too_busy(RETRY_AFTER_SECS).plain());
        }
        let wait = async {
            let repo = repo_slots
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let global = self
                .global
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            PackPermit {
                _global: global,
                _repo: repo,
            }
        };
        let result = tokio::time::timeout(self.timeout, wait).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        result.map_err(|_| ApiError::too_busy(RETRY_AFTER_SECS).plain())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_gets_429() {
        let limits = Limits {
            max_pack_jobs: 1,
            max_pack_jobs_per_repo: 1,
            pack_queue: 0,
            pack_queue_timeout: Duration::from_millis(50),
        };
        let admission = Admission::new(&limits);
        let slots = Arc::new(Semaphore::new(1));
        let held = admission.acquire(&slots).await.expect("first gets a slot");
        let refused = admission
            .acquire(&slots)
            .await
            .err()
            .expect("second is refused");
        assert_eq!(refused.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after, Some(RETRY_AFTER_SECS));
        drop(held);
        admission.acquire(&slots).await.expect("slot free again");
    }

    #[tokio::test]
    async fn queued_request_times_out_with_429() {
        let limits = Limits {
            max_pack_jobs: 1,
            max_pack_jobs_per_repo: 1,
            pack_queue: 4,
            pack_queue_timeout: Duration::from_millis(20),
        };
        let admission = Admission::new(&limits);
        let slots = Arc::new(Semaphore::new(1));
        let _held = admission.acquire(&slots).await.expect("first gets a slot");
        let refused = admission
            .acquire(&slots)
            .await
            .err()
            .expect("waits, then refused");
        assert_eq!(refused.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
    }
}
