//! A thin fanotify layer: groups, marks on open descriptors, responses, and the event records
//! parsed by a pure function ([`parse_events`]).
//!
//! Constants newer than the C library's headers are defined here from the kernel's
//! `include/uapi/linux/fanotify.h` (pre-content events: Linux 6.14).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use thiserror::Error;

/// Errors parsing fanotify event records.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// A record shorter than its header or than what its header says.
    #[error("truncated fanotify event record at byte {0}")]
    Truncated(usize),
    /// A record of another ABI version.
    #[error("fanotify event record of version {0}, expected 3")]
    Version(u8),
}

/// `FAN_OPEN_PERM`: a file is being opened; the opener waits for the answer.
pub const FAN_OPEN_PERM: u64 = 0x0001_0000;
/// `FAN_PRE_ACCESS`: a file's content is about to be accessed (read, written, truncated,
/// mapped); the accessor waits for the answer. The event carries a range record.
pub const FAN_PRE_ACCESS: u64 = 0x0010_0000;
/// `FAN_EVENT_INFO_TYPE_RANGE`: the info record of a [`FAN_PRE_ACCESS`] event.
pub const FAN_EVENT_INFO_TYPE_RANGE: u8 = 6;
/// `FAN_REPORT_TID`: events carry the thread id, not the thread group's.
const FAN_REPORT_TID: u32 = 0x0000_0100;
/// `FANOTIFY_METADATA_VERSION`.
const METADATA_VERSION: u8 = 3;
/// `sizeof(struct fanotify_event_metadata)`.
const METADATA_LEN: usize = 24;
/// `FAN_ALLOW`.
const FAN_ALLOW: u32 = 0x01;

/// One event record as the kernel wrote it (the descriptor not yet owned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// The event mask.
    pub mask: u64,
    /// The descriptor the kernel opened for the listener (negative: none).
    pub fd: i32,
    /// The thread that caused the event (`FAN_REPORT_TID`; 0: not visible in the listener's
    /// PID namespace).
    pub pid: i32,
    /// The range of a [`FAN_PRE_ACCESS`] event: `(offset, count)`; a truncation has count 0
    /// and the new size as offset.
    pub range: Option<(u64, u64)>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// Parses the event records a `read(2)` of a fanotify group returned.
pub fn parse_events(buf: &[u8]) -> Result<Vec<RawEvent>, ParseError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        if buf.len() - at < METADATA_LEN {
            return Err(ParseError::Truncated(at));
        }
        let event_len = u32_at(buf, at) as usize;
        let vers = buf[at + 4];
        let metadata_len = u16_at(buf, at + 6) as usize;
        if vers != METADATA_VERSION {
            return Err(ParseError::Version(vers));
        }
        if event_len < METADATA_LEN
            || metadata_len < METADATA_LEN
            || metadata_len > event_len
            || buf.len() - at < event_len
        {
            return Err(ParseError::Truncated(at));
        }
        let mut ev = RawEvent {
            mask: u64_at(buf, at + 8),
            fd: u32_at(buf, at + 16) as i32,
            pid: u32_at(buf, at + 20) as i32,
            range: None,
        };
        // Info records: {u8 type, u8 pad, u16 len, ...}.
        let mut info = at + metadata_len;
        let end = at + event_len;
        while end - info >= 4 {
            let kind = buf[info];
            let len = u16_at(buf, info + 2) as usize;
            if len < 4 || len > end - info {
                return Err(ParseError::Truncated(info));
            }
            // struct fanotify_event_info_range: header, u32 pad, u64 offset, u64 count.
            if kind == FAN_EVENT_INFO_TYPE_RANGE && len >= 24 {
                ev.range = Some((u64_at(buf, info + 8), u64_at(buf, info + 16)));
            }
            info += len;
        }
        out.push(ev);
        at = end;
    }
    Ok(out)
}

/// An event with the descriptor the kernel opened for it, owned (closed on drop).
#[derive(Debug)]
pub struct Event {
    /// The record.
    pub raw: RawEvent,
    /// The descriptor, if there is one.
    pub file: Option<File>,
}

/// A fanotify group.
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
}

impl Group {
    fn init(class: u32) -> io::Result<Group> {
        // FAN_REPORT_TID: the event names the thread that made the call, whose
        // /proc/<tid>/syscall tells what it is doing.
        let flags = class | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | FAN_REPORT_TID;
        let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32;
        // SAFETY: fanotify_init takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by fanotify_init and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Group { fd })
    }

    /// A group of the pre-content class (permission and pre-content events; needs
    /// `CAP_SYS_ADMIN`).
    pub fn pre_content() -> io::Result<Group> {
        Self::init(libc::FAN_CLASS_PRE_CONTENT)
    }

    fn mark_op(&self, op: u32, file: &File, mask: u64) -> io::Result<()> {
        // SAFETY: with a null path, fanotify_mark marks the inode of the open descriptor
        // `file`; every argument is an integer or that null pointer.
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                op,
                mask,
                file.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A second descriptor of the same group (`F_DUPFD_CLOEXEC`).
    pub fn try_clone(&self) -> io::Result<Group> {
        Ok(Group {
            fd: self.fd.try_clone()?,
        })
    }

    /// Adds `mask` to the mark of `file`'s inode.
    pub fn mark(&self, file: &File, mask: u64) -> io::Result<()> {
        self.mark_op(libc::FAN_MARK_ADD, file, mask)
    }

    /// Removes `file`'s inode mark.
    pub fn unmark(&self, file: &File, mask: u64) -> io::Result<()> {
        self.mark_op(libc::FAN_MARK_REMOVE, file, mask)
    }

    /// Reads the pending events (none: `WouldBlock`).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Vec<Event>> {
        // SAFETY: read writes at most `buf.len()` bytes into `buf`, a live mutable slice.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = parse_events(&buf[..n as usize])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(raw
            .into_iter()
            .map(|raw| Event {
                raw,
                // SAFETY: the kernel opened this descriptor for the reader of the event and
                // handed it over; nothing else owns it.
                file: (raw.fd >= 0).then(|| unsafe { File::from_raw_fd(raw.fd) }),
            })
            .collect())
    }

    /// Lets the access behind the permission event whose descriptor is `fd` go on.
    pub fn allow(&self, fd: RawFd) -> io::Result<()> {
        let resp: [u32; 2] = [fd as u32, FAN_ALLOW];
        // SAFETY: write reads the 8 bytes of `resp` (a `struct fanotify_response`).
        let n = unsafe { libc::write(self.fd.as_raw_fd(), resp.as_ptr().cast(), 8) };
        if n != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Group {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(mask: u64, fd: i32, pid: i32, range: Option<(u64, u64)>) -> Vec<u8> {
        let info_len = if range.is_some() { 24 } else { 0 };
        let mut b = Vec::new();
        b.extend_from_slice(&((METADATA_LEN + info_len) as u32).to_ne_bytes());
        b.push(METADATA_VERSION);
        b.push(0);
        b.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&fd.to_ne_bytes());
        b.extend_from_slice(&pid.to_ne_bytes());
        if let Some((off, count)) = range {
            b.push(FAN_EVENT_INFO_TYPE_RANGE);
            b.push(0);
            b.extend_from_slice(&24u16.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&off.to_ne_bytes());
            b.extend_from_slice(&count.to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_what_the_kernel_writes() {
        // The records measured on Linux 6.18: open(O_TRUNC), a write, ftruncate(4096),
        // truncate(0).
        let mut buf = record(FAN_OPEN_PERM, 5, 1234, None);
        buf.extend(record(FAN_PRE_ACCESS, 6, 1234, Some((4096, 4096))));
        buf.extend(record(FAN_PRE_ACCESS, 7, 1234, Some((4096, 0))));
        buf.extend(record(FAN_PRE_ACCESS, 8, 0, Some((0, 0))));
        let ev = parse_events(&buf).unwrap();
        assert_eq!(
            ev,
            vec![
                RawEvent {
                    mask: FAN_OPEN_PERM,
                    fd: 5,
                    pid: 1234,
                    range: None
                },
                RawEvent {
                    mask: FAN_PRE_ACCESS,
                    fd: 6,
                    pid: 1234,
                    range: Some((4096, 4096))
                },
                RawEvent {
                    mask: FAN_PRE_ACCESS,
                    fd: 7,
                    pid: 1234,
                    range: Some((4096, 0))
                },
                RawEvent {
                    mask: FAN_PRE_ACCESS,
                    fd: 8,
                    pid: 0,
                    range: Some((0, 0))
                },
            ]
        );
        assert_eq!(parse_events(&[]).unwrap(), vec![]);
    }

    #[test]
    fn refuses_broken_records() {
        let good = record(FAN_OPEN_PERM, 3, 1, None);
        assert_eq!(parse_events(&good[..10]), Err(ParseError::Truncated(0)));
        let mut v = good.clone();
        v[4] = 2;
        assert_eq!(parse_events(&v), Err(ParseError::Version(2)));
        let mut long = good.clone();
        long[0] = 200;
        assert_eq!(parse_events(&long), Err(ParseError::Truncated(0)));
        let mut bad_info = record(FAN_PRE_ACCESS, 3, 1, Some((1, 2)));
        bad_info[METADATA_LEN + 2] = 200;
        assert!(matches!(
            parse_events(&bad_info),
            Err(ParseError::Truncated(_))
        ));
        // An unknown info record is skipped.
        let mut other = record(FAN_PRE_ACCESS, 3, 1, Some((1, 2)));
        other[METADATA_LEN] = 99;
        assert_eq!(parse_events(&other).unwrap()[0].range, None);
    }
}
