//! `/healthz`: healthy while the export loop (ring drain and refresh)
//! keeps running. The HTTP server runs on its own task and would answer
//! "ok" from a process whose loop is stuck; a heartbeat the loop writes
//! and the handler reads tells the two apart.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::http::StatusCode;

/// The loop's last turn, in milliseconds since the heartbeat was made.
#[derive(Clone)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    /// How long the loop may go without a turn and still be healthy.
    limit: Duration,
}

impl Heartbeat {
    /// A loop that turns at least every `interval` is stalled after
    /// three missed turns, and never sooner than ten seconds (a slow
    /// refresh on a busy host is not a stall).
    pub fn new(interval: Duration) -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            limit: (interval * 3).max(Duration::from_secs(10)),
        }
    }

    /// Called by the loop on every turn.
    pub fn beat(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the loop has gone without a turn, if longer than allowed.
    pub fn stalled_for(&self) -> Option<Duration> {
        let silent = self
            .start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
        (silent > self.limit).then_some(silent)
    }

    /// The `/healthz` answer: 200 while the loop turns, 503 once it stalls.
    pub fn answer(&self) -> (StatusCode, String) {
        match self.stalled_for() {
            None => (StatusCode::OK, "ok\n".into()),
            Some(silent) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "stalled: the event loop (ring drain and refresh) has not run for {} s\n",
                    silent.as_secs()
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_while_the_loop_beats_and_unhealthy_once_it_stops() {
        let mut heartbeat = Heartbeat::new(Duration::from_millis(1));
        heartbeat.limit = Duration::from_millis(30);
        heartbeat.beat();
        assert_eq!(heartbeat.answer(), (StatusCode::OK, "ok\n".to_string()));
        std::thread::sleep(Duration::from_millis(60));
        let (status, body) = heartbeat.answer();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.starts_with("stalled: "), "{body}");
        heartbeat.beat();
        assert_eq!(heartbeat.answer().0, StatusCode::OK);
    }

    #[test]
    fn the_limit_is_three_intervals_and_at_least_ten_seconds() {
        assert_eq!(
            Heartbeat::new(Duration::from_secs(1)).limit,
            Duration::from_secs(10)
        );
        assert_eq!(
            Heartbeat::new(Duration::from_secs(30)).limit,
            Duration::from_secs(90)
        );
    }
}
