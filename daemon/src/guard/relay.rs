//! The truncation guard across the PID namespace of `--sandbox namespace`.
//!
//! fanotify names the process behind an event in the PID namespace of the process that reads
//! the event: inside the sandbox's namespace every host process is 0, so the daemon could not
//! read a caller's `/proc/<pid>/syscall` and would learn of `O_TRUNC` opens and truncations to
//! unaligned sizes only after the fact. So under `namespace` the supervisor, which stays in the
//! host's namespaces, reads the group's events ([`RelayServer`]): it lets every access through
//! at once, except the truncations [`truncation_of`] finds, which it hands to the daemon, named
//! by the file's identity (the daemon keeps a descriptor of every mapped file), over a datagram
//! socket pair ([`Request`]). No descriptor crosses: a daemon at its open-file limit still gets
//! every request. The daemon's guard makes the window safe as usual and says so
//! ([`RelayLink::done`], a blocking send); then the supervisor lets the truncation go on. The
//! daemon still marks the files (the group is shared across the fork).
//!
//! The supervisor never blocks on the daemon and trusts nothing it sends: a token it did not
//! hand out is ignored; a request it cannot send (the daemon's queue is full) lets the
//! truncation go on at once (counted; inotify then catches it after the fact); it serves at
//! most [`BATCH`] messages per wake-up, so a flood cannot starve its signals. A daemon that
//! never answers only keeps the truncating host process waiting, as a daemon without the relay
//! would.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use vfsdax_protocol::guard::GuardTrigger;

use super::caller;
use super::decide::{truncation_of, NewSize};
use super::fanotify::{Event, Group};
use crate::dax::FileId;
use crate::sandbox::SupervisorDuty;

/// Bytes of an encoded [`Request`].
pub const REQUEST_LEN: usize = 40;

/// The most messages one side serves per wake-up before it polls again.
pub const BATCH: usize = 64;

/// A truncation the supervisor hands to the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The supervisor's name for the event, sent back once the window is safe.
    pub token: u64,
    /// The file.
    pub file: FileId,
    /// The size the file is going to have.
    pub new_size: NewSize,
    /// How it was learnt.
    pub trigger: GuardTrigger,
    /// The truncating thread, as the host numbers it.
    pub pid: i32,
}

impl Request {
    /// `token` (u64), size kind (u8: 0 exact, 1 shorter by, 2 current), trigger (u8: 0
    /// pre-content, 1 open with `O_TRUNC`), 2 bytes of padding, `pid` (i32), size (u64), the
    /// file's device and inode numbers (u64 each); native endian.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let (kind, size) = match self.new_size {
            NewSize::Exact(n) => (0u8, n),
            NewSize::Shorter(n) => (1, n),
            NewSize::Current => (2, 0),
        };
        let trigger = match self.trigger {
            GuardTrigger::OpenTruncate => 1u8,
            _ => 0,
        };
        let mut b = [0u8; REQUEST_LEN];
        b[0..8].copy_from_slice(&self.token.to_ne_bytes());
        b[8] = kind;
        b[9] = trigger;
        b[12..16].copy_from_slice(&self.pid.to_ne_bytes());
        b[16..24].copy_from_slice(&size.to_ne_bytes());
        b[24..32].copy_from_slice(&self.file.dev.to_ne_bytes());
        b[32..40].copy_from_slice(&self.file.ino.to_ne_bytes());
        b
    }

    /// The request in `b`, if it is one.
    pub fn decode(b: &[u8]) -> Option<Request> {
        if b.len() != REQUEST_LEN {
            return None;
        }
        let u64_at = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let size = u64_at(16);
        let new_size = match b[8] {
            0 => NewSize::Exact(size),
            1 => NewSize::Shorter(size),
            2 => NewSize::Current,
            _ => return None,
        };
        let trigger = match b[9] {
            0 => GuardTrigger::PreContent,
            1 => GuardTrigger::OpenTruncate,
            _ => return None,
        };
        Some(Request {
            token: u64_at(0),
            file: FileId {
                dev: u64_at(24),
                ino: u64_at(32),
            },
            new_size,
            trigger,
            pid: i32::from_ne_bytes(b[12..16].try_into().unwrap_or([0; 4])),
        })
    }
}

/// The daemon's end: truncations in, tokens out. The socket blocks: the daemon reads only
/// what `poll` announced (`MSG_DONTWAIT`), and its answers wait for room rather than be lost.
#[derive(Debug)]
pub struct RelayLink {
    sock: UnixDatagram,
}

impl RelayLink {
    /// The requests waiting (at most [`BATCH`]); a malformed message is dropped.
    pub fn recv(&self) -> Vec<Request> {
        let mut out = Vec::new();
        while out.len() < BATCH {
            let mut buf = [0u8; REQUEST_LEN + 1];
            // SAFETY: recv writes at most `buf.len()` bytes into `buf`, a live local array.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                break;
            };
            if let Some(r) = Request::decode(&buf[..n]) {
                out.push(r);
            }
        }
        out
    }

    /// Tells the supervisor the window is safe for the truncation `token` (waits for room).
    pub fn done(&self, token: u64) {
        let _ = self.sock.send(&token.to_ne_bytes());
    }
}

impl AsRawFd for RelayLink {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// The supervisor's end: reads the group, answers it, hands truncations over.
#[derive(Debug)]
pub struct RelayServer {
    group: Group,
    sock: UnixDatagram,
    /// Truncations let go unguarded because the request could not be sent.
    unsent: u64,
    /// The daemon's process id (host numbering): its own threads' calls are guarded where
    /// they are made.
    daemon: libc::pid_t,
    page: u64,
    next: u64,
    pending: HashMap<u64, Event>,
    buf: Vec<u8>,
}

/// A relay over `group`: the daemon's end and the supervisor's (which reads a second
/// descriptor of the same group).
pub fn pair(group: &Group) -> io::Result<(RelayLink, RelayServer)> {
    let (a, b) = UnixDatagram::pair()?;
    b.set_nonblocking(true)?;
    Ok((
        RelayLink { sock: a },
        RelayServer {
            group: group.try_clone()?,
            sock: b,
            unsent: 0,
            daemon: 0,
            page: crate::dax::host_page_size(),
            next: 1,
            pending: HashMap::new(),
            buf: vec![0u8; 64 * 1024],
        },
    ))
}

impl RelayServer {
    fn allow(&self, event: &Event) {
        if let Some(f) = &event.file {
            let _ = self.group.allow(f.as_raw_fd());
        }
    }

    fn events(&mut self) {
        // One read returns up to a buffer of events; a few reads per wake-up.
        for _ in 0..BATCH / 16 {
            let events = match self.group.read(&mut self.buf) {
                Ok(ev) => ev,
                Err(_) => return,
            };
            for ev in events {
                self.event(ev);
            }
        }
    }

    /// Truncations let go unguarded because the daemon's queue was full.
    pub fn unsent(&self) -> u64 {
        self.unsent
    }

    fn event(&mut self, ev: Event) {
        let daemon = self.daemon;
        let pid = ev.raw.pid;
        let intent = || {
            if caller::tgid_of(None, pid) == Some(daemon) {
                caller::OpenIntent::Unknown
            } else {
                caller::intent_of_pid(None, pid)
            }
        };
        let decided = truncation_of(&ev.raw, self.page, intent);
        let (Some(file), Some((new_size, trigger))) = (&ev.file, decided) else {
            self.allow(&ev);
            return;
        };
        let Ok(id) = FileId::of(file) else {
            self.allow(&ev);
            return;
        };
        let token = self.next;
        self.next += 1;
        let req = Request {
            token,
            file: id,
            new_size,
            trigger,
            pid,
        };
        match self.sock.send(&req.encode()) {
            Ok(_) => {
                self.pending.insert(token, ev);
            }
            Err(_) => {
                self.unsent += 1;
                crate::guest_log!(
                    log::Level::Warn,
                    "truncation guard: the daemon's queue is full; a truncation of dev {} ino {} \
                     goes on unguarded (caught after the fact)",
                    id.dev,
                    id.ino
                );
                self.allow(&ev);
            }
        }
    }

    fn answers(&mut self) {
        let mut b = [0u8; 8];
        for _ in 0..BATCH {
            let Ok(n) = self.sock.recv(&mut b) else {
                return;
            };
            if n == 8 {
                if let Some(ev) = self.pending.remove(&u64::from_ne_bytes(b)) {
                    self.allow(&ev);
                }
            }
        }
    }
}

impl SupervisorDuty for RelayServer {
    fn started(&mut self, child: libc::pid_t) {
        self.daemon = child;
    }

    fn fds(&self) -> Vec<RawFd> {
        vec![self.group.as_raw_fd(), self.sock.as_raw_fd()]
    }

    fn ready(&mut self, fd: RawFd) {
        if fd == self.group.as_raw_fd() {
            self.events();
        } else if fd == self.sock.as_raw_fd() {
            self.answers();
        }
    }
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        // Nobody is left to make the window safe: let the truncations go on.
        for ev in self.pending.values() {
            self.allow(ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> FileId {
        FileId { dev: 0xfe00, ino }
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request {
                token: 7,
                file: id(12),
                new_size: NewSize::Exact(5000),
                trigger: GuardTrigger::PreContent,
                pid: 1234,
            },
            Request {
                token: u64::MAX,
                file: id(u64::MAX),
                new_size: NewSize::Shorter(1 << 40),
                trigger: GuardTrigger::OpenTruncate,
                pid: -1,
            },
            Request {
                token: 0,
                file: id(1),
                new_size: NewSize::Current,
                trigger: GuardTrigger::PreContent,
                pid: 0,
            },
        ] {
            assert_eq!(Request::decode(&r.encode()), Some(r));
        }
    }

    #[test]
    fn malformed_requests_are_none() {
        let good = Request {
            token: 1,
            file: id(2),
            new_size: NewSize::Exact(0),
            trigger: GuardTrigger::PreContent,
            pid: 1,
        }
        .encode();
        assert_eq!(Request::decode(&good[..REQUEST_LEN - 1]), None);
        let mut v = good.to_vec();
        v.push(0);
        assert_eq!(Request::decode(&v), None);
        let mut kind = good;
        kind[8] = 3;
        assert_eq!(Request::decode(&kind), None);
        let mut trig = good;
        trig[9] = 9;
        assert_eq!(Request::decode(&trig), None);
    }

    #[test]
    fn the_link_reads_what_is_there_and_answers() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let link = RelayLink { sock: b };
        assert!(link.recv().is_empty(), "nothing yet, and no waiting");
        let r = Request {
            token: 3,
            file: id(77),
            new_size: NewSize::Exact(4096),
            trigger: GuardTrigger::PreContent,
            pid: 9,
        };
        a.send(&r.encode()).unwrap();
        // Garbage is dropped; the requests around it are kept.
        a.send(&[1u8, 2, 3]).unwrap();
        a.send(&r.encode()).unwrap();
        assert_eq!(link.recv(), vec![r, r]);
        // More than a batch waits for the next wake-up.
        for _ in 0..BATCH + 5 {
            a.send(&r.encode()).unwrap();
        }
        assert_eq!(link.recv().len(), BATCH);
        assert_eq!(link.recv().len(), 5);
        link.done(3);
        let mut b8 = [0u8; 8];
        assert_eq!(a.recv(&mut b8).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(b8), 3);
    }
}
