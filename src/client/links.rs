//! Rules about connections that both ends must apply alike without talking to each other.

use crate::core::PeerId;

/// Two connections to the same remote exist (both sides offered at once, through the tracker
/// or the relay). Both ends keep the one offered by the smaller peer id, so they agree.
/// `*_offered_by_us` say which side offered each. Returns whether to keep the newer one (and
/// close the older); when neither or both fit the rule, the older stays.
pub fn keep_newer_duplicate(
    local: PeerId,
    remote: PeerId,
    newer_offered_by_us: bool,
    older_offered_by_us: bool,
) -> bool {
    let we_should_offer = local < remote;
    newer_offered_by_us == we_should_offer && older_offered_by_us != we_should_offer
}

/// A relayed offer from `remote` arrives while our own relayed offer to it is unanswered:
/// whether to drop ours and answer theirs. Exactly one of the two ends says yes.
pub fn yield_to_crossing_offer(local: PeerId, remote: PeerId) -> bool {
    remote < local
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerId = PeerId([1; 20]);
    const B: PeerId = PeerId([2; 20]);

    #[test]
    fn both_ends_keep_the_same_connection() {
        // Connection X was offered by A, Y by B. Whichever each end saw first, both keep X
        // (A is the smaller id).
        for a_saw_x_first in [true, false] {
            for b_saw_x_first in [true, false] {
                // At A, "offered by us" is true for X.
                let a_keeps_x = if a_saw_x_first {
                    !keep_newer_duplicate(A, B, false, true)
                } else {
                    keep_newer_duplicate(A, B, true, false)
                };
                // At B, "offered by us" is true for Y.
                let b_keeps_x = if b_saw_x_first {
                    !keep_newer_duplicate(B, A, true, false)
                } else {
                    keep_newer_duplicate(B, A, false, true)
                };
                assert!(a_keeps_x && b_keeps_x, "{a_saw_x_first} {b_saw_x_first}");
            }
        }
    }

    #[test]
    fn same_direction_duplicates_keep_the_older() {
        assert!(!keep_newer_duplicate(A, B, true, true));
        assert!(!keep_newer_duplicate(A, B, false, false));
    }

    #[test]
    fn exactly_one_end_yields_to_a_crossing_offer() {
        assert_ne!(yield_to_crossing_offer(A, B), yield_to_crossing_offer(B, A));
        assert!(yield_to_crossing_offer(B, A));
    }
}
