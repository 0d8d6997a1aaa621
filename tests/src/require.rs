//! What a test needs from the machine: a printed skip outside CI, a failure under `CI` (where
//! every resource the suite needs is installed, so a missing one is a broken setup, not a
//! reason to pass).

use std::io::Write;
use std::path::Path;

/// Says that `test` is skipped and why, straight to stderr (the test harness does not capture
/// it). Under `CI` a skip is a failure: panics instead.
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set, so {test} may not be skipped: {reason}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Whether `/dev/kvm` exists; if not, [`skip`]s `test` (a failure under `CI`).
pub fn kvm(test: &str) -> bool {
    let present = Path::new("/dev/kvm").exists();
    if !present {
        skip(test, "/dev/kvm does not exist on this machine");
    }
    present
}
