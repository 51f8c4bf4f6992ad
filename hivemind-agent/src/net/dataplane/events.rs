//! The one reader of the `HM_EVENTS` ring buffer: decodes verdict events and fans them out to
//! subscribers over a broadcast channel (a slow subscriber loses events, never the datapath).
//!
//! The programs do not wake the reader for every event (see
//! [`hivemind_common::event::EVENTS_WAKEUP_BYTES`]): it drains the ring every
//! [`POLL_INTERVAL`], and at once when the programs wake it because a batch has piled up.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use hivemind_common::event::VerdictEvent;
use tokio::{io::unix::AsyncFd, sync::broadcast, task::JoinHandle};

/// Events buffered per subscriber before the oldest are dropped for it.
pub const SUBSCRIBER_BUFFER: usize = 4096;

/// The longest an event waits in the ring before the reader picks it up.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Option<VerdictEvent> {
    if bytes.len() < size_of::<VerdictEvent>() {
        return None;
    }
    // SAFETY: the record holds at least `size_of::<VerdictEvent>()` bytes, written by the
    // programs as a `VerdictEvent` (`#[repr(C)]`, integers only: every bit pattern is valid);
    // `read_unaligned` copes with the ring's 8-byte alignment.
    Some(unsafe { bytes.as_ptr().cast::<VerdictEvent>().read_unaligned() })
}

/// Spawns the reader; it runs until aborted.
pub fn spawn(ring: RingBuf<MapData>, tx: broadcast::Sender<VerdictEvent>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // SAFETY: the ring buffer owns its map fd and keeps it open, unreplaced, for as long
        // as the `AsyncFd` owns the ring buffer.
        let registered = unsafe { AsyncFd::register(ring) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(err) => {
                tracing::error!(error = %err, "cannot poll the events ring buffer; no verdict events");
                return;
            }
        };
        loop {
            match tokio::time::timeout(POLL_INTERVAL, fd.readable_mut()).await {
                Ok(Ok(mut guard)) => {
                    drain(guard.get_inner_mut(), &tx);
                    guard.clear_ready();
                }
                // Nobody woke us: the events written meanwhile are below the wakeup mark.
                Err(_elapsed) => drain(fd.get_mut(), &tx),
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "events ring buffer poll failed; no verdict events");
                    return;
                }
            }
        }
    })
}

fn drain(ring: &mut RingBuf<MapData>, tx: &broadcast::Sender<VerdictEvent>) {
    while let Some(item) = ring.next() {
        if let Some(event) = decode(&item) {
            // No subscriber is not an error.
            let _ = tx.send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use hivemind_common::event::VerdictEvent;

    use super::decode;

    #[test]
    fn decodes_whole_records_only() {
        let event = VerdictEvent {
            saddr: u32::from_ne_bytes([10, 244, 0, 2]),
            dport: 80,
            reason: 2,
            policy_id: 7,
            ..VerdictEvent::default()
        };
        // SAFETY: `VerdictEvent` is `#[repr(C)]` plain data without implicit padding.
        let bytes: [u8; size_of::<VerdictEvent>()] = unsafe { std::mem::transmute(event) };
        // Ring records are padded to 8 bytes; extra bytes are ignored.
        let mut padded = bytes.to_vec();
        padded.extend_from_slice(&[0; 8]);
        assert_eq!(decode(&padded), Some(event));
        assert_eq!(decode(&bytes[..40]), None);
    }
}
