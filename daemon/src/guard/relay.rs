//! The truncation guard across the PID namespace of `--sandbox namespace`.
//!
//! fanotify names the process behind an event in the PID namespace of the process that reads
//! the event: inside the sandbox's namespace every host process is 0, so the daemon could not
//! read a caller's `/proc/<pid>/syscall` and would learn of `O_TRUNC` opens and truncations to
//! unaligned sizes only after the fact. So under `namespace` the supervisor, which stays in the
//! host's namespaces, reads the group's events ([`RelayServer`]): it lets every access through
//! at once, except the truncations [`truncation_of`] finds, which it hands to the daemon with
//! the event's descriptor over a datagram socket pair ([`Request`]). The daemon's guard makes
//! the window safe as usual and says so ([`RelayLink::done`]); then the supervisor lets the
//! truncation go on. The daemon still marks the files (the group is shared across the fork).
//!
//! The supervisor trusts nothing the daemon sends: a token it did not hand out is ignored, and
//! a daemon that never answers only keeps the truncating host process waiting, as a daemon
//! without the relay would.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use vfsdax_protocol::guard::GuardTrigger;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::caller;
use super::decide::{truncation_of, NewSize};
use super::fanotify::{Event, Group};
use crate::sandbox::SupervisorDuty;

/// Bytes of an encoded [`Request`].
pub const REQUEST_LEN: usize = 24;

/// A truncation the supervisor hands to the daemon (with the file's descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The supervisor's name for the event, sent back once the window is safe.
    pub token: u64,
    /// The size the file is going to have.
    pub new_size: NewSize,
    /// How it was learnt.
    pub trigger: GuardTrigger,
    /// The truncating thread, as the host numbers it.
    pub pid: i32,
}

impl Request {
    /// `token` (u64), size kind (u8: 0 exact, 1 shorter by), trigger (u8: 0 pre-content, 1
    /// open with `O_TRUNC`), 2 bytes of padding, `pid` (i32), size (u64); native endian.
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
            _ => return None,
        };
        let trigger = match b[9] {
            0 => GuardTrigger::PreContent,
            1 => GuardTrigger::OpenTruncate,
            _ => return None,
        };
        Some(Request {
            token: u64_at(0),
            new_size,
            trigger,
            pid: i32::from_ne_bytes(b[12..16].try_into().unwrap_or([0; 4])),
        })
    }
}

/// The daemon's end: truncations in, tokens out.
#[derive(Debug)]
pub struct RelayLink {
    sock: UnixDatagram,
}

impl RelayLink {
    /// The truncations waiting, each with its file (none: `WouldBlock`). A malformed message
    /// is dropped (its descriptor closed).
    pub fn recv(&self) -> io::Result<Vec<(Request, File)>> {
        let mut out = Vec::new();
        loop {
            let mut buf = [0u8; REQUEST_LEN + 1];
            match self.sock.recv_with_fd(&mut buf) {
                Ok((n, Some(file))) => {
                    if let Some(r) = Request::decode(&buf[..n]) {
                        out.push((r, file));
                    }
                }
                Ok((_, None)) => {}
                Err(e) if e.errno() == libc::EAGAIN && !out.is_empty() => return Ok(out),
                Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
            }
        }
    }

    /// Tells the supervisor the window is safe for the truncation `token`.
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
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((
        RelayLink { sock: a },
        RelayServer {
            group: group.try_clone()?,
            sock: b,
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
        loop {
            let events = match self.group.read(&mut self.buf) {
                Ok(ev) => ev,
                Err(_) => return,
            };
            for ev in events {
                self.event(ev);
            }
        }
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
        let (Some(file), Some((new_size, trigger))) =
            (&ev.file, truncation_of(&ev.raw, self.page, intent))
        else {
            self.allow(&ev);
            return;
        };
        let token = self.next;
        self.next += 1;
        let req = Request {
            token,
            new_size,
            trigger,
            pid,
        };
        match self.sock.send_with_fd(&req.encode()[..], file.as_raw_fd()) {
            Ok(_) => {
                self.pending.insert(token, ev);
            }
            Err(_) => self.allow(&ev),
        }
    }

    fn answers(&mut self) {
        let mut b = [0u8; 8];
        while let Ok(n) = self.sock.recv(&mut b) {
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

    #[test]
    fn requests_round_trip() {
        for r in [
            Request {
                token: 7,
                new_size: NewSize::Exact(5000),
                trigger: GuardTrigger::PreContent,
                pid: 1234,
            },
            Request {
                token: u64::MAX,
                new_size: NewSize::Shorter(1 << 40),
                trigger: GuardTrigger::OpenTruncate,
                pid: -1,
            },
        ] {
            assert_eq!(Request::decode(&r.encode()), Some(r));
        }
    }

    #[test]
    fn malformed_requests_are_none() {
        let good = Request {
            token: 1,
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
        kind[8] = 2;
        assert_eq!(Request::decode(&kind), None);
        let mut trig = good;
        trig[9] = 9;
        assert_eq!(Request::decode(&trig), None);
    }

    #[test]
    fn a_request_carries_its_file() {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let link = RelayLink { sock: b };
        assert_eq!(
            link.recv().unwrap_err().raw_os_error(),
            Some(libc::EAGAIN),
            "nothing yet"
        );
        let f = File::open("/proc/self/status").unwrap();
        let r = Request {
            token: 3,
            new_size: NewSize::Exact(4096),
            trigger: GuardTrigger::PreContent,
            pid: 9,
        };
        a.send_with_fd(&r.encode()[..], f.as_raw_fd()).unwrap();
        // Garbage with a descriptor is dropped, as is a message without one.
        a.send_with_fd(&[1u8, 2, 3][..], f.as_raw_fd()).unwrap();
        a.send(&r.encode()).unwrap();
        let got = link.recv().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, r);
        let st = |f: &File| {
            use std::os::unix::fs::MetadataExt;
            let m = f.metadata().unwrap();
            (m.dev(), m.ino())
        };
        assert_eq!(st(&got[0].1), st(&f));
        link.done(3);
        let mut b8 = [0u8; 8];
        assert_eq!(a.recv(&mut b8).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(b8), 3);
    }
}
