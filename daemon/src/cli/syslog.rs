//! `--syslog`: every log record as one syslog datagram on `/dev/log` (RFC 3164's
//! `<PRI>TAG[PID]: MESSAGE`, facility `user` as virtiofsd; no timestamp: the syslog daemon
//! stamps what it receives, and inside the sandbox the host's time zone is out of reach).
//!
//! The socket is connected once, at start, before the sandbox and the seccomp filter: inside
//! the sandbox `/dev/log` is not reachable and `connect` is not allowed, but the connected
//! socket keeps working, and each record is a single `send` (the allowed `sendto`). A record the
//! syslog daemon cannot take at once (its queue full, or it went away) is dropped, never waited
//! for: a logging thread is often a queue thread.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// Where syslog listens.
pub const DEV_LOG: &str = "/dev/log";

/// Facility `user` (1), shifted as in a PRI.
const FACILITY_USER: u8 = 1 << 3;

/// A `log::Log` writing to a connected syslog socket.
pub struct SyslogLogger {
    sock: UnixDatagram,
    tag: String,
    pid: u32,
    level: log::LevelFilter,
}

impl SyslogLogger {
    /// Connects to the syslog socket at `path`; records are tagged `tag[pid]` (`pid` is the
    /// process started, the one a service manager or libvirt knows, also for the lines of the
    /// daemon serving inside a PID namespace), those up to `level` sent.
    pub fn connect(
        path: &Path,
        tag: &str,
        pid: u32,
        level: log::LevelFilter,
    ) -> io::Result<SyslogLogger> {
        let sock = UnixDatagram::unbound()?;
        sock.connect(path)?;
        Ok(SyslogLogger {
            sock,
            tag: tag.to_string(),
            pid,
            level,
        })
    }

    /// The datagram for a record of `level` saying `msg`.
    pub fn line(&self, level: log::Level, msg: &str) -> String {
        let severity = match level {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        };
        format!(
            "<{}>{}[{}]: {msg}",
            FACILITY_USER | severity,
            self.tag,
            self.pid
        )
    }

    /// Installs this logger for the `log` macros.
    pub fn install(self) -> Result<(), log::SetLoggerError> {
        let level = self.level;
        log::set_boxed_logger(Box::new(self))?;
        log::set_max_level(level);
        Ok(())
    }
}

impl log::Log for SyslogLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.line(record.level(), &record.args().to_string());
        // SAFETY: `line` is a live buffer of `line.len()` bytes that send only reads; the
        // socket descriptor stays open as long as `self`.
        unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                line.as_ptr().cast(),
                line.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_reach_the_socket_as_rfc3164_lines() {
        let dir = std::env::temp_dir().join(format!("vfsdax-syslog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let logger = SyslogLogger::connect(&path, "vfsdaxd", 42, log::LevelFilter::Info).unwrap();
        assert_eq!(
            logger.line(log::Level::Warn, "w"),
            "<12>vfsdaxd[42]: w",
            "user.warning"
        );
        assert_eq!(logger.line(log::Level::Error, "e"), "<11>vfsdaxd[42]: e");
        assert_eq!(logger.line(log::Level::Info, "i"), "<14>vfsdaxd[42]: i");
        assert_eq!(logger.line(log::Level::Trace, "t"), "<15>vfsdaxd[42]: t");
        log::Log::log(
            &logger,
            &log::Record::builder()
                .level(log::Level::Error)
                .args(format_args!("hello {}", 1))
                .build(),
        );
        log::Log::log(
            &logger,
            &log::Record::builder()
                .level(log::Level::Debug)
                .args(format_args!("below the level"))
                .build(),
        );
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<11>vfsdaxd[42]: hello 1");
        server.set_nonblocking(true).unwrap();
        assert!(
            server.recv(&mut buf).is_err(),
            "the debug record was not sent"
        );
        // The receiver gone: the record is dropped, nothing blocks or fails.
        drop(server);
        log::Log::log(
            &logger,
            &log::Record::builder()
                .level(log::Level::Error)
                .args(format_args!("lost"))
                .build(),
        );
        assert!(SyslogLogger::connect(&dir.join("none"), "x", 1, log::LevelFilter::Info).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
