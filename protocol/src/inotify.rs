//! The `struct inotify_event` records a `read(2)` of an inotify descriptor returns: both the
//! daemon's truncation guard and the VMM glue's shrink watcher watch mapped files with
//! `IN_MODIFY`.

/// `sizeof(struct inotify_event)` without the name.
pub const EVENT_LEN: usize = 16;

/// Parses the records of one `read(2)`: `(watch descriptor, mask)` each (a truncated trailing
/// record is dropped).
pub fn parse_events(buf: &[u8]) -> Vec<(i32, u32)> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= EVENT_LEN {
        let word = |i: usize| {
            u32::from_ne_bytes(buf[at + 4 * i..at + 4 * i + 4].try_into().unwrap_or([0; 4]))
        };
        let (wd, mask, name_len) = (word(0) as i32, word(1), word(3) as usize);
        out.push((wd, mask));
        at = match at.checked_add(EVENT_LEN + name_len) {
            Some(next) if next <= buf.len() => next,
            _ => break,
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN_MODIFY: u32 = 0x2;
    const IN_IGNORED: u32 = 0x8000;

    fn record(wd: i32, mask: u32, name: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&wd.to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        b.extend_from_slice(name);
        b
    }

    #[test]
    fn parses_records_with_and_without_names() {
        let mut buf = record(1, IN_MODIFY, b"");
        buf.extend(record(7, IN_IGNORED, b"name\0\0\0\0"));
        buf.extend(record(2, IN_MODIFY, b""));
        assert_eq!(
            parse_events(&buf),
            vec![(1, IN_MODIFY), (7, IN_IGNORED), (2, IN_MODIFY)]
        );
        assert!(parse_events(&buf[..10]).is_empty());
        // A name length past the buffer (or u32::MAX) ends the parse.
        let mut huge = record(3, IN_MODIFY, b"");
        huge[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        huge.extend(record(4, IN_MODIFY, b""));
        assert_eq!(parse_events(&huge), vec![(3, IN_MODIFY)]);
    }
}
