//! The start every guest tool (`tests/src/bin/guest-*.rs`) shares: its parsed arguments (or
//! `--help`), the guest set-up, and the daemon to run; errors come back as messages to print.
//! Also what the benchmarks share: [`median`] and [`program_version`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

/// The median of `v` (the mean of the middle two for an even count); `None` if empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The first line of `program --version`, or the program's path if it prints none.
pub fn program_version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.lines().next().map(str::to_owned)
        })
        .filter(|l| !l.trim().is_empty())
        .unwrap_or_else(|| program.display().to_string())
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

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[0.5]), Some(0.5));
        assert_eq!(median(&[]), None);
    }
}
