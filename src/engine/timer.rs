//! Deadlines for the tokio-based engines: one timer per connection.
//!
//! Each connection owns one `tokio::time::Sleep` for its whole life and races
//! every read and write against it ([`before`]). Which deadline applies is
//! decided by the core ([`crate::http::DeadlineClock`]); this module only
//! waits for it, cheaply:
//! - the timer is re-armed only when a deadline is *earlier* than the one it
//!   holds; a later deadline is left alone, and when the timer then fires
//!   early it is re-armed to the current deadline. On a busy keep-alive
//!   connection the timer wheel is touched about once per timeout period,
//!   not once per request; the per-operation cost is a clock read and a
//!   comparison (plus registering the waker when the operation must wait);
//! - the operation is polled first, so one that is ready at once (a write
//!   into a socket with room) never touches the timer.

use std::future::Future;
use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// Runs `operation` until it completes (`Some(output)`) or `deadline` passes
/// (`None`; the operation is dropped).
pub async fn before<F: Future>(
    mut timer: Pin<&mut Sleep>,
    deadline: std::time::Instant,
    operation: F,
) -> Option<F::Output> {
    let deadline = Instant::from_std(deadline);
    if timer.deadline() > deadline {
        timer.as_mut().reset(deadline);
    }
    tokio::pin!(operation);
    loop {
        tokio::select! {
            biased;
            output = &mut operation => return Some(output),
            () = timer.as_mut() => {
                if Instant::now() >= deadline {
                    return None;
                }
                timer.as_mut().reset(deadline);
            }
        }
    }
}

/// A timer for a new connection, armed at `deadline`.
pub fn connection_timer(deadline: std::time::Instant) -> Sleep {
    tokio::time::sleep_until(Instant::from_std(deadline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_later_deadline_is_honoured_after_the_timer_fires_early() {
        runtime().block_on(async {
            let start = std::time::Instant::now();
            let timer = connection_timer(start + Duration::from_millis(10));
            tokio::pin!(timer);
            let slow = tokio::time::sleep(Duration::from_millis(30));
            let result = before(timer.as_mut(), start + Duration::from_millis(50), slow).await;
            assert_eq!(result, Some(()), "the 10 ms arming must not cut a 50 ms deadline");
            let never = std::future::pending::<()>();
            let result = before(timer.as_mut(), start + Duration::from_millis(60), never).await;
            assert_eq!(result, None);
            assert!(tokio::time::Instant::now() >= Instant::from_std(start + Duration::from_millis(60)));
        });
    }

    #[test]
    fn an_earlier_deadline_re_arms_the_timer() {
        runtime().block_on(async {
            let start = std::time::Instant::now();
            let timer = connection_timer(start + Duration::from_secs(60));
            tokio::pin!(timer);
            let never = std::future::pending::<()>();
            let waited = before(timer.as_mut(), start + Duration::from_millis(20), never);
            // Without the re-arm this would wait the timer's 60 s.
            let result = tokio::time::timeout(Duration::from_secs(10), waited).await;
            assert_eq!(result, Ok(None));
        });
    }
}
