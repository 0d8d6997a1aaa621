//! Which permission events announce a truncation, and to what size: the guard's decision table,
//! pure (the caller's intent is asked for only when the event alone cannot tell).

use vfsdax_protocol::guard::GuardTrigger;

use super::caller::OpenIntent;
use super::fanotify::{RawEvent, FAN_OPEN_PERM, FAN_PRE_ACCESS};

/// The size a file is going to have, or has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewSize {
    /// This many bytes.
    Exact(u64),
    /// This many bytes shorter than now (a collapsed range).
    Shorter(u64),
    /// What it is now (after the fact).
    Current,
}

/// The truncation `event` announces, if any: the new size and how it was learnt. `page` is the
/// host page size; `intent` tells what the calling thread is doing (read from its `/proc`
/// entries), asked only for an open or a pre-content event over whole pages.
///
/// - pre-content `(size, 0)`: `truncate(2)`/`ftruncate(2)` to a page-aligned `size`;
/// - pre-content `(page-aligned offset, one page)`: a one-page read or write, or a truncation
///   to a size inside that page: the caller's call says which;
/// - pre-content `(page-aligned offset, whole pages)`: a read or write, or a collapsed range
///   (`fallocate(FALLOC_FL_COLLAPSE_RANGE)` announces the range it removes; file systems take
///   only block-aligned ranges, so whole pages): the caller's call says which;
/// - open permission: a truncation to 0 if the caller opens with `O_TRUNC`;
/// - anything else is an access to let through.
pub fn truncation_of(
    event: &RawEvent,
    page: u64,
    intent: impl FnOnce() -> OpenIntent,
) -> Option<(NewSize, GuardTrigger)> {
    if event.mask & FAN_PRE_ACCESS != 0 {
        return match event.range {
            Some((size, 0)) => Some((NewSize::Exact(size), GuardTrigger::PreContent)),
            Some((off, count)) if count > 0 && count % page == 0 && off % page == 0 => {
                match intent() {
                    OpenIntent::TruncatesTo(size) => {
                        Some((NewSize::Exact(size), GuardTrigger::PreContent))
                    }
                    OpenIntent::Collapses(len) => {
                        Some((NewSize::Shorter(len), GuardTrigger::PreContent))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
    }
    if event.mask & FAN_OPEN_PERM != 0 && intent() == OpenIntent::Truncates {
        return Some((NewSize::Exact(0), GuardTrigger::OpenTruncate));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn ev(mask: u64, range: Option<(u64, u64)>) -> RawEvent {
        RawEvent {
            mask,
            fd: 3,
            pid: 42,
            range,
        }
    }

    fn unasked() -> OpenIntent {
        panic!("the event alone says it")
    }

    #[test]
    fn page_aligned_truncations_need_no_caller() {
        assert_eq!(
            truncation_of(&ev(FAN_PRE_ACCESS, Some((8192, 0))), PAGE, unasked),
            Some((NewSize::Exact(8192), GuardTrigger::PreContent))
        );
        assert_eq!(
            truncation_of(&ev(FAN_PRE_ACCESS, Some((0, 0))), PAGE, unasked),
            Some((NewSize::Exact(0), GuardTrigger::PreContent))
        );
    }

    #[test]
    fn one_page_events_ask_the_caller() {
        let one_page = ev(FAN_PRE_ACCESS, Some((4096, 4096)));
        assert_eq!(
            truncation_of(&one_page, PAGE, || OpenIntent::TruncatesTo(5000)),
            Some((NewSize::Exact(5000), GuardTrigger::PreContent))
        );
        assert_eq!(
            truncation_of(&one_page, PAGE, || OpenIntent::Collapses(8192)),
            Some((NewSize::Shorter(8192), GuardTrigger::PreContent))
        );
        for other in [
            OpenIntent::Unknown,
            OpenIntent::Keeps,
            OpenIntent::Truncates,
        ] {
            assert_eq!(truncation_of(&one_page, PAGE, || other), None, "{other:?}");
        }
        // A range of whole pages is a read, a write or a collapsed range.
        let pages = ev(FAN_PRE_ACCESS, Some((4096, 8192)));
        assert_eq!(
            truncation_of(&pages, PAGE, || OpenIntent::Collapses(8192)),
            Some((NewSize::Shorter(8192), GuardTrigger::PreContent))
        );
        assert_eq!(truncation_of(&pages, PAGE, || OpenIntent::Keeps), None);
        // Reads and writes of other shapes are let through without asking.
        for range in [
            Some((100, 4096)),
            Some((4096, 100)),
            Some((4096, 6000)),
            None,
        ] {
            assert_eq!(
                truncation_of(&ev(FAN_PRE_ACCESS, range), PAGE, unasked),
                None
            );
        }
    }

    #[test]
    fn opens_truncate_only_with_o_trunc() {
        let open = ev(FAN_OPEN_PERM, None);
        assert_eq!(
            truncation_of(&open, PAGE, || OpenIntent::Truncates),
            Some((NewSize::Exact(0), GuardTrigger::OpenTruncate))
        );
        assert_eq!(truncation_of(&open, PAGE, || OpenIntent::Keeps), None);
        assert_eq!(truncation_of(&open, PAGE, || OpenIntent::Unknown), None);
        assert_eq!(truncation_of(&ev(0, None), PAGE, unasked), None);
    }
}
