//! The reference VMM's logic (the `vfsdax-vmm` binary is only its command line): where the DAX
//! mapping comes from, running a truncation scenario in the KVM reference VM, and rendering what
//! happened.
//!
//! - [`crate::daemon`]: [`DaemonBacking`], the mapping served by `vfsdaxd` (vhost-user frontend,
//!   `dax::connect()`, the virtio-fs driver's INIT / LOOKUP / OPEN / SETUPMAPPING, and the file
//!   changed through FUSE or on the host).
//! - [`crate::output`]: JSON report lines, the run summary and a readable account of a run.

use crate::scenario::{
    run_scenario_with, LocalFile, Scenario, ScenarioError, ScenarioResult, Truncation,
};

pub use crate::daemon::{DaemonBacking, DaemonError, DaemonTarget, MappedFile, TruncateVia};

/// Errors of a reference VMM run.
#[derive(Debug, thiserror::Error)]
pub enum RefVmmError {
    /// Setting up the mapping through the daemon failed.
    #[error("setting up the DAX mapping through vfsdaxd failed")]
    Daemon(#[from] DaemonError),
    /// The scenario failed.
    #[error("the scenario failed")]
    Scenario(#[from] ScenarioError),
}

/// Where the DAX mapping comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The VMM writes `scenario.file` and maps it itself.
    Local,
    /// `vfsdaxd` maps a file of its share.
    Daemon(DaemonTarget),
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The scenario's result.
    pub result: ScenarioResult,
    /// The daemon's mapping, in daemon mode.
    pub mapped: Option<MappedFile>,
    /// A failure closing the daemon connection after a finished run (the run itself is valid).
    pub close_error: Option<DaemonError>,
}

/// Runs `scenario` with the mapping from `source`.
pub fn run(scenario: &Scenario, source: &Source) -> Result<RunOutput, RefVmmError> {
    match source {
        Source::Local => {
            let mut local = LocalFile::create(&scenario.file)?;
            let result = run_scenario_with(scenario, &mut local)?;
            Ok(RunOutput {
                result,
                mapped: None,
                close_error: None,
            })
        }
        Source::Daemon(target) => {
            let mut backing = DaemonBacking::connect(target.clone())?;
            let mapped = backing.mapped().clone();
            let result = run_scenario_with(scenario, &mut backing)?;
            let close_error = backing.close().err();
            Ok(RunOutput {
                result,
                mapped: Some(mapped),
                close_error,
            })
        }
    }
}

/// What the host (or the other client) does, in words.
pub fn describe_truncation(t: Truncation, via: Option<&TruncateVia>) -> String {
    let what = match t {
        Truncation::None => return "nothing changes the file (control run)".into(),
        Truncation::UnmapBeforeAccess => {
            return "the accessed half of the mapping is removed from the window \
                    (REMOVEMAPPING): the guest then touches a range it no longer maps"
                .into()
        }
        Truncation::ToZero => "truncates the file to 0 bytes".to_string(),
        Truncation::BelowAccessedPage => format!(
            "truncates the file to {:#x} bytes, below the accessed page",
            crate::scenario::BELOW_SIZE
        ),
        Truncation::UnlinkAndRecreate => {
            "unlinks the name and creates a new file under it (the mapping keeps the old inode)"
                .to_string()
        }
        Truncation::TruncateThenReextend => {
            "truncates the file to 0 and extends it again before the access".to_string()
        }
    };
    let fuse_ops = if t == Truncation::UnlinkAndRecreate {
        "UNLINK, CREATE and WRITE"
    } else {
        "SETATTR(size)"
    };
    match via {
        None => format!("the host {what}"),
        Some(TruncateVia::Fuse) => {
            format!("another client of the share {what} (FUSE {fuse_ops} through vfsdaxd)")
        }
        Some(TruncateVia::Host(p)) => format!("a host process {what} ({})", p.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncations_name_who_and_how() {
        assert_eq!(
            describe_truncation(Truncation::ToZero, Some(&TruncateVia::Fuse)),
            "another client of the share truncates the file to 0 bytes \
             (FUSE SETATTR(size) through vfsdaxd)"
        );
        assert!(
            describe_truncation(Truncation::UnlinkAndRecreate, Some(&TruncateVia::Fuse))
                .contains("UNLINK, CREATE and WRITE")
        );
        let host = TruncateVia::Host("/srv/share/f".into());
        assert!(
            describe_truncation(Truncation::BelowAccessedPage, Some(&host))
                .starts_with("a host process truncates the file to 0x1800 bytes")
        );
        assert!(describe_truncation(Truncation::ToZero, None).starts_with("the host "));
        assert!(describe_truncation(Truncation::None, None).contains("control"));
    }
}
