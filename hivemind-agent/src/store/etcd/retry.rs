//! Riding through etcd's leader elections and lost members: which failures pass by themselves
//! (and are worth another attempt), which may still have been applied, and the pacing of the
//! attempts.

use std::time::Duration;

use tokio::time::Instant;

use super::super::StoreError;

/// How long one call keeps trying through an election or a lost member before it gives up.
/// etcd elects a new leader in about a second and a supervised member restarts in a few.
pub(super) const RIDE_THROUGH: Duration = Duration::from_secs(15);
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// etcd's (and the transport's) words for conditions that pass by themselves.
const TRANSIENT: &[&str] = &[
    "leader changed",
    "no leader",
    "timed out",
    // tonic's words when an attempt's deadline passes.
    "Timeout expired",
    "too many requests",
    "server stopped",
    "not capable",
    "transport error",
    "connection",
    "h2 protocol",
    "broken pipe",
    "operation was canceled",
];

/// Words of failures that happen before a request reaches etcd, or that etcd gives before
/// proposing anything (the client asks for a leader on every request): a write that failed so
/// was certainly not applied.
const NOT_SENT: &[&str] = &[
    "no leader",
    // hyper's words for a request dropped before it was written (its connection had closed).
    "operation was canceled",
    "error trying to connect",
    "tcp connect error",
    "Connection refused",
];

/// Whether `err` is worth another attempt: an election, a restarting or unreachable member, a
/// dropped connection, or an attempt that ran out of time.
pub(in crate::store) fn is_transient(err: &StoreError) -> bool {
    match err {
        StoreError::EtcdTimeout { .. } => true,
        StoreError::Etcd { source, .. } => match source {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            etcd_client::Error::GRpcStatus(status) => {
                matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) || TRANSIENT.iter().any(|m| status.message().contains(m))
            }
            _ => false,
        },
        _ => false,
    }
}

/// Whether a write that failed with `err` may nevertheless have been applied: any transient
/// failure but a refused connection or etcd's "no leader".
pub(super) fn may_have_applied(err: &StoreError) -> bool {
    is_transient(err) && !NOT_SENT.iter().any(|m| crate::error_chain(err).contains(m))
}

/// The pauses between attempts of one call: growing from 50 ms to 1 s, within
/// [`RIDE_THROUGH`] of the first attempt.
pub(super) struct Attempts {
    started: Instant,
    pause: Duration,
}

impl Attempts {
    pub(super) fn start() -> Self {
        Self {
            started: Instant::now(),
            pause: FIRST_PAUSE,
        }
    }

    /// Sleeps before the next attempt; false (at once) if it would start past the deadline.
    pub(super) async fn pause(&mut self) -> bool {
        if self.started.elapsed() + self.pause >= RIDE_THROUGH {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        true
    }

    pub(super) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(status: tonic::Status) -> StoreError {
        StoreError::Etcd {
            op: "txn",
            endpoints: "https://127.0.0.1:2379".into(),
            source: etcd_client::Error::GRpcStatus(status),
        }
    }

    #[test]
    fn elections_and_lost_connections_are_transient() {
        for err in [
            etcd(tonic::Status::unavailable("etcdserver: leader changed")),
            etcd(tonic::Status::unavailable("etcdserver: no leader")),
            etcd(tonic::Status::unknown(
                "etcdserver: request timed out, possibly due to previous leader failure",
            )),
            etcd(tonic::Status::unknown(
                "h2 protocol error: connection reset",
            )),
            StoreError::EtcdTimeout {
                op: "range",
                endpoints: String::new(),
                timeout: Duration::from_secs(5),
            },
        ] {
            assert!(is_transient(&err), "{err:?}");
        }
        for err in [
            etcd(tonic::Status::invalid_argument(
                "etcdserver: duplicate key given in txn request",
            )),
            etcd(tonic::Status::permission_denied(
                "etcdserver: permission denied",
            )),
            StoreError::LeaseNotFound { lease: 7 },
        ] {
            assert!(!is_transient(&err), "{err:?}");
        }
    }

    #[test]
    fn only_refusals_are_known_not_applied() {
        assert!(!may_have_applied(&etcd(tonic::Status::unavailable(
            "etcdserver: no leader"
        ))));
        assert!(!may_have_applied(&etcd(tonic::Status::unavailable(
            "error trying to connect: tcp connect error: Connection refused (os error 111)"
        ))));
        let dropped = etcd(tonic::Status::cancelled("operation was canceled"));
        assert!(is_transient(&dropped) && !may_have_applied(&dropped));
        assert!(may_have_applied(&StoreError::EtcdTimeout {
            op: "txn",
            endpoints: String::new(),
            timeout: Duration::from_secs(5),
        }));
        assert!(may_have_applied(&etcd(tonic::Status::unavailable(
            "etcdserver: request timed out"
        ))));
        assert!(may_have_applied(&etcd(tonic::Status::unavailable(
            "etcdserver: leader changed"
        ))));
    }
}
