//! Helpers shared by the DAX tests without a VM (`tests/tests/dax_e2e.rs`, `dax_leak.rs`,
//! `truncation_guard.rs`): a daemon with the glue's window as its frontend ([`DaxSession`]), a
//! process-wide lock, and counts and lookups over this process's descriptors and mappings.

use std::fs::File;
use std::sync::{Mutex, MutexGuard};

use vfsdax_driver::ClientOptions;
use vfsdax_protocol::fuse::flags::{SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE};
use vfsdax_protocol::fuse::{RemoveMappingOne, SetupMappingIn, ROOT_ID};
use vfsdax_vmm_glue::dax::{connect, ConnectOptions, DaxConnection, FileIdentity};
use vhost::vhost_user::message::VhostUserProtocolFeatures;

use crate::harness::{error_chain, DaemonOptions, Session};

/// 2 MiB: a DAX chunk.
pub const MIB2: u64 = 2 << 20;
/// The window [`start_dax`] asks for.
pub const WINDOW: u64 = 64 << 20;
/// `FUSE_SETUPMAPPING_FLAG_READ`.
pub const R: u64 = SETUPMAPPING_FLAG_READ;
/// `FUSE_SETUPMAPPING_FLAG_WRITE`.
pub const W: u64 = SETUPMAPPING_FLAG_WRITE;
/// The `fh` of a Linux guest's SETUPMAPPING.
pub const NO_FH: u64 = u64::MAX;

/// Takes the process-wide lock of the DAX tests, so nothing else opens files or maps memory
/// while one of them counts. A test that panicked while holding it does not poison it.
pub fn serialized() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The truncation guard's JSON reports in a daemon log (`truncation guard: {...}` lines), in
/// order.
pub fn guard_reports(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| {
            l.split_once("truncation guard: {")
                .map(|(_, j)| format!("{{{j}"))
        })
        // A rate-limited line may end with "(N similar messages suppressed)".
        .map(|j| j[..=j.rfind('}').unwrap_or(0)].to_string())
        .map(|j| serde_json::from_str(&j).unwrap_or_else(|e| panic!("guard report {j}: {e}")))
        .collect()
}

/// The number of entries of the directory `path` (e.g. a `/proc/<pid>/fd`); panics if it cannot
/// be listed.
pub fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path)
        .unwrap_or_else(|e| panic!("list {path}: {e}"))
        .count()
}

/// The number of this process's open file descriptors.
pub fn fd_count() -> usize {
    count_dir("/proc/self/fd")
}

/// The number of this process's memory mappings (lines of `/proc/self/maps`).
pub fn maps_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .count()
}

/// The permissions (`r--s`, `---p`, ...) of this process's mapping containing `addr`.
pub fn perms_at(addr: u64) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        (start <= addr && addr < end).then(|| perms.to_string())
    })
}

/// A daemon with a 64 MiB window, an initialised driver and the glue's window connected.
pub struct DaxSession {
    /// The glue's side (dropped first: the request thread stops before the daemon is killed).
    pub conn: DaxConnection,
    /// The daemon and the driver.
    pub s: Session,
}

/// Starts `vfsdaxd --cache-size 64M` plus `extra`, INITs the driver, connects the glue's window
/// as the backend request handler and, with `init_flags`, sends INIT again with them (the
/// daemon then probes the frontend).
pub fn start_dax(extra: &[&str], init_flags: u64) -> DaxSession {
    start_dax_with(
        &DaemonOptions {
            extra_args: extra.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
        init_flags,
    )
}

/// [`start_dax`] with every daemon option (`extra_args` after `--cache-size 64M`, unless they
/// give a `--cache-size` of their own).
pub fn start_dax_with(opts: &DaemonOptions, init_flags: u64) -> DaxSession {
    let own_size = opts.extra_args.iter().any(|a| a == "--cache-size");
    let mut args = if own_size {
        Vec::new()
    } else {
        vec!["--cache-size".to_string(), "64M".to_string()]
    };
    args.extend(opts.extra_args.iter().cloned());
    let dopts = DaemonOptions {
        extra_args: args,
        ..opts.clone()
    };
    let s = Session::start_with(&dopts, ClientOptions::default());
    let mut d = DaxSession::attach(s);
    if !own_size {
        assert_eq!(d.conn.window().size(), WINDOW, "GET_SHMEM_CONFIG region 0");
    }
    if init_flags != 0 {
        d.s.client
            .init_with(7, 38, init_flags)
            .expect("INIT with the given flags");
    }
    d
}

impl DaxSession {
    /// Connects the glue's window to the daemon of an initialised session (`vfsdaxd
    /// --cache-size`) as the backend request handler.
    pub fn attach(mut s: Session) -> DaxSession {
        let proto = s.client.frontend().protocol_features();
        for f in [
            VhostUserProtocolFeatures::SHMEM,
            VhostUserProtocolFeatures::BACKEND_REQ,
            VhostUserProtocolFeatures::BACKEND_SEND_FD,
            VhostUserProtocolFeatures::REPLY_ACK,
        ] {
            assert!(proto.contains(f), "{f:?} not negotiated: {proto:?}");
        }
        let conn = connect(
            s.client.frontend_mut().frontend_mut(),
            ConnectOptions {
                reply_ack: true,
                observer: None,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "dax::connect: {}\ndaemon log:\n{}",
                error_chain(&e),
                s.daemon.log_text()
            )
        });
        DaxSession { conn, s }
    }

    /// The window's host address.
    pub fn base(&self) -> u64 {
        self.conn.window().host_addr()
    }

    /// A host file `name` in the share holding `bytes`, looked up: (node id, host file).
    pub fn file(&mut self, name: &str, bytes: &[u8]) -> (u64, File) {
        let p = self.s.host(name);
        std::fs::write(&p, bytes).expect("write host file");
        let e = self
            .s
            .client
            .lookup(ROOT_ID, name.as_bytes())
            .expect("LOOKUP");
        (e.nodeid, File::open(&p).expect("open host file"))
    }

    /// OPEN of `node` with `flags`: the handle.
    pub fn open(&mut self, node: u64, flags: i32) -> u64 {
        self.s.client.open(node, flags as u32).expect("OPEN").fh
    }

    /// SETUPMAPPING; the errno of a refusal.
    pub fn map(
        &mut self,
        node: u64,
        fh: u64,
        foffset: u64,
        moffset: u64,
        len: u64,
        flags: u64,
    ) -> Result<(), i32> {
        let arg = SetupMappingIn {
            fh,
            foffset,
            len,
            flags,
            moffset,
        };
        self.s.client.setupmapping(node, &arg).map_err(|e| {
            e.errno().unwrap_or_else(|| {
                panic!(
                    "SETUPMAPPING: {}\ndaemon log:\n{}",
                    error_chain(&e),
                    self.s.daemon.log_text()
                )
            })
        })
    }

    /// REMOVEMAPPING of `ranges`; the errno of a refusal.
    pub fn unmap(&mut self, ranges: &[(u64, u64)]) -> Result<(), i32> {
        let items: Vec<RemoveMappingOne> = ranges
            .iter()
            .map(|&(moffset, len)| RemoveMappingOne { moffset, len })
            .collect();
        self.s
            .client
            .removemapping(ROOT_ID, &items)
            .map_err(|e| e.errno().expect("an error reply"))
    }

    /// The window's bytes at `moffset` (must be mapped readable).
    pub fn window_bytes(&self, moffset: u64, len: u64) -> &[u8] {
        assert!(moffset + len <= self.conn.window().size());
        // SAFETY: the caller mapped [moffset, moffset+len) readable with an acknowledged
        // SETUPMAPPING; the window stays reserved while `self.conn` lives, which the returned
        // borrow of `self` guarantees.
        unsafe { std::slice::from_raw_parts((self.base() + moffset) as *const u8, len as usize) }
    }

    /// The glue's table as (window offset, len, file offset, writable, identity).
    pub fn table(&self) -> Vec<(u64, u64, u64, bool, FileIdentity)> {
        self.conn
            .window()
            .table()
            .snapshot()
            .iter()
            .map(|m| {
                (
                    m.window_offset,
                    m.len,
                    m.file_offset,
                    m.writable,
                    m.identity,
                )
            })
            .collect()
    }
}
