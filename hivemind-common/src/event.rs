//! Verdict events, written to the ring buffer `HM_EVENTS` and streamed by `hivemind monitor`.

pub const VERDICT_FORWARDED: u8 = 1;
pub const VERDICT_DROPPED: u8 = 2;

/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// The programs write events without waking the agent's reader, which drains the ring on a
/// short timer; they wake it early only once this many bytes wait (about 2 300 events). A
/// wakeup per event costs the packet's CPU a self-interrupt (`irq_work`) and the reader a
/// context switch each: under a flood of drops that was more than the rest of the drop path.
pub const EVENTS_WAKEUP_BYTES: u64 = EVENTS_BYTES as u64 / 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictEvent {
    pub timestamp_ns: u64,
    /// Wire byte order.
    pub saddr: u32,
    pub daddr: u32,
    /// Host order.
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `policy::DIRECTION_*` of the decision (meaningful for policy drops).
    pub direction: u8,
    pub _pad: u8,
    /// `reason::*`.
    pub reason: u32,
    /// Policy that decided, 0 if none (default deny or no policy).
    pub policy_id: u32,
    /// Interface the program ran on.
    pub ifindex: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Packet length.
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<VerdictEvent>() == 48);
