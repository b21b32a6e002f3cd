//! Per-connection timeouts without a timer per I/O operation.
//!
//! `tokio::time::timeout` around every read reads the clock, registers an entry in the
//! runtime's timer wheel when the read has to wait, and removes it again when the read
//! completes — twice per proxied request on a keep-alive connection (bench/gateway's profile:
//! `clear_entry`, `clock_gettime`). A [`Deadline`] keeps one `Sleep` per connection side and
//! arms it lazily:
//!
//! ```text
//!  run(limit, io) ─► poll io once ─► ready: done (no clock read, no timer)
//!                  └► pending: deadline = now + limit
//!                       sleep armed later than deadline? ─► move it earlier (reset)
//!                       sleep fires ─► now ≥ deadline: Err(timed out)
//!                                   └► earlier than the deadline (armed by an earlier
//!                                      operation): re-arm to the deadline, keep waiting
//! ```
//!
//! The timer is therefore (re-)registered about once per `limit` per connection instead of once
//! per operation, while every operation still fails no later than `limit` after it started
//! waiting (the same bound as `tokio::time::timeout`).

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A lazily re-armed timer for a sequence of I/O operations on one connection side.
pub struct Deadline {
    /// Created by the first operation that waits (none until then: no allocation, no clock read
    /// for a side that never waits).
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Default for Deadline {
    fn default() -> Self {
        Self::new()
    }
}

impl Deadline {
    /// A timer that is not armed yet.
    pub fn new() -> Self {
        Deadline { sleep: None }
    }

    /// Runs `io` with at most `limit` of waiting. `Err(true)`: timed out; `Err(false)`: `io`
    /// failed. Needs a tokio runtime with time enabled once `io` has to wait.
    pub async fn run<T>(
        &mut self,
        limit: Duration,
        io: impl Future<Output = std::io::Result<T>>,
    ) -> Result<T, bool> {
        let mut io = pin!(io);
        // Most operations complete on the first poll (data already there, socket writable).
        let first = std::future::poll_fn(|cx| Poll::Ready(io.as_mut().poll(cx))).await;
        if let Poll::Ready(r) = first {
            return r.map_err(|_| false);
        }
        let deadline = Instant::now() + limit;
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() > deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = io.as_mut().poll(cx) {
                return Poll::Ready(r.map_err(|_| false));
            }
            while sleep.as_mut().poll(cx).is_ready() {
                if Instant::now() >= deadline {
                    return Poll::Ready(Err(true));
                }
                sleep.as_mut().reset(deadline);
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn times_out_after_the_limit_even_when_armed_earlier() {
        let mut d = Deadline::new();
        // Ready at once: no timeout.
        assert_eq!(d.run(Duration::from_secs(5), async { Ok(1) }).await, Ok(1));
        // Errors are told apart from timeouts.
        let failed = d
            .run(Duration::from_secs(5), async {
                Err::<(), _>(std::io::Error::other("x"))
            })
            .await;
        assert_eq!(failed, Err(false));
        // A waiting operation arms the timer at +5 s; it completes after 3 s.
        let start = Instant::now();
        let r = d
            .run(Duration::from_secs(5), async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(2)
            })
            .await;
        assert_eq!(r, Ok(2));
        // The next one waits forever: the stale +5 s firing must not end it at +5 s (2 s in),
        // only 5 s after it started.
        let second = Instant::now();
        let r = d
            .run(
                Duration::from_secs(5),
                std::future::pending::<std::io::Result<()>>(),
            )
            .await;
        assert_eq!(r, Err(true));
        assert_eq!(second.elapsed(), Duration::from_secs(5));
        assert_eq!(start.elapsed(), Duration::from_secs(8));
        // A shorter limit than the armed one moves the timer earlier.
        let third = Instant::now();
        let mut d = Deadline::new();
        let _ = d
            .run(Duration::from_secs(60), async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(())
            })
            .await;
        let r = d
            .run(
                Duration::from_secs(1),
                std::future::pending::<std::io::Result<()>>(),
            )
            .await;
        assert_eq!(r, Err(true));
        assert!(third.elapsed() <= Duration::from_millis(1002));
    }
}
