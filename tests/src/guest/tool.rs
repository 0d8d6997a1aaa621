//! The start every guest tool (`tests/src/bin/guest-*.rs`) shares: its parsed arguments (or
//! `--help`), the guest set-up, and the daemon to run; errors come back as messages to print.

use std::path::PathBuf;

use super::daemon;
use super::run::GuestSetup;
use crate::harness::error_chain;

/// The arguments a tool parsed and the detected guest set-up; `Ok(None)` when `parsed` is the
/// empty error of `--help` (the tool prints `usage`). Another parse error comes back with
/// `usage` after it.
pub fn start<A>(parsed: Result<A, String>, usage: &str) -> Result<Option<(A, GuestSetup)>, String> {
    let args = match parsed {
        Ok(a) => a,
        Err(e) if e.is_empty() => return Ok(None),
        Err(e) => return Err(format!("{e}\n{usage}")),
    };
    let setup = GuestSetup::detect().map_err(|e| error_chain(&e))?;
    Ok(Some((args, setup)))
}

/// The daemon program `given` on the command line, else vfsdaxd ([`daemon::vfsdaxd_path`]).
pub fn daemon_or_vfsdaxd(given: Option<PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(p) => Ok(p),
        None => daemon::vfsdaxd_path().map_err(|e| error_chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_and_parse_errors_come_back_before_the_set_up() {
        let help: Result<(), String> = Err(String::new());
        assert_eq!(start(help, "usage: t").map(|s| s.is_none()), Ok(true));
        let bad: Result<(), String> = Err("unknown argument \"-x\"".into());
        assert_eq!(
            start(bad, "usage: t").map(|s| s.is_none()),
            Err("unknown argument \"-x\"\nusage: t".to_string())
        );
    }

    #[test]
    fn a_given_daemon_is_kept() {
        let p = PathBuf::from("/opt/virtiofsd");
        assert_eq!(daemon_or_vfsdaxd(Some(p.clone())), Ok(p));
    }
}
