//! The memory bound the server's caps imply for the attack, which the
//! peak growth is reported against.

use super::{
    BURST_SECONDS, BYTES_PER_SECOND_PER_ADDRESS, MAX_SIGNAL_BYTES, OUTBOUND_QUEUE_BYTES, SENDERS,
    WRITE_TIMEOUT,
};

/// The memory the caps allow the attack to hold, in bytes (see the formula
/// in the documentation of [`super`]), and its two candidate terms.
pub(super) struct Bound {
    pub(super) total: u64,
    pub(super) queues: u64,
    pub(super) rate: u64,
    pub(super) in_flight: u64,
}

impl Bound {
    pub(super) fn of(stalled: usize) -> Self {
        let queues = stalled as u64 * OUTBOUND_QUEUE_BYTES;
        let rate = BYTES_PER_SECOND_PER_ADDRESS * (WRITE_TIMEOUT.as_secs() + BURST_SECONDS);
        let in_flight = (stalled + SENDERS) as u64 * 2 * MAX_SIGNAL_BYTES as u64;
        Self {
            total: queues.min(rate) + in_flight,
            queues,
            rate,
            in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_takes_the_smaller_cap() {
        let few = Bound::of(2);
        assert_eq!(few.queues, 2 * OUTBOUND_QUEUE_BYTES);
        assert_eq!(
            few.total,
            few.queues + (2 + SENDERS) as u64 * 2 * MAX_SIGNAL_BYTES as u64
        );
        let many = Bound::of(1000);
        assert_eq!(many.total - many.in_flight, many.rate);
    }
}
