//! Command line of `vfsdaxd`, compatible with `virtiofsd` for everything a VMM or libvirt passes.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use thiserror::Error;

use crate::capabilities::{self, Modification};
use crate::passthrough::xattrmap::{XattrMap, XattrMapError};
use crate::sandbox::SandboxMode;
use crate::seccomp::SeccompMode;

/// Whether the truncation guard keeps the VMM's DAX window safe when a mapped file shrinks
/// (`--truncate-guard`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TruncateGuard {
    /// Guard every mapped file as well as the kernel allows.
    #[default]
    On,
    /// No guard.
    Off,
    /// Guard, and decline DAX for files that cannot be guarded before a truncation.
    Required,
}

/// What the truncation guard puts where a shrunk file's pages were (`--truncate-guard-action`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TruncateGuardAction {
    /// Zero pages from a fresh memfd: the guest reads zeros, as from a hole (any VMM survives).
    #[default]
    Zero,
    /// Nothing: the range is unmapped from the window (a VMM linking vfsdax-vmm-glue then
    /// reports the guest's access with its own policy).
    Unmap,
}

/// How long the guest may cache names, attributes and data (virtiofsd's `--cache`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Metadata for 1 s, data until the file changes.
    #[default]
    Auto,
    /// Metadata and data cached for a long time (the share is not changed behind the guest).
    Always,
    /// Nothing cached: every access goes to the host (direct I/O).
    Never,
    /// Metadata for 1 s, no data caching.
    Metadata,
}

/// Which files the guest accesses through DAX when it mounts with `dax=inode` (or without a
/// `dax` option, which Linux treats as `dax=inode`). Whatever the policy, a file is marked only
/// if the frontend can map it whole (see `dax::frontend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaxPolicy {
    /// Every regular file when the frontend can map any file range; no file when it can map
    /// only ranges inside files (QEMU 11.1), where a file that grows would hit a range the
    /// frontend refuses.
    Auto,
    /// Every regular file the frontend can map whole.
    Always,
    /// No file.
    Never,
    /// Files carrying the `FS_XFLAG_DAX` inode flag (`chattr +x`).
    Xattr,
    /// Regular files of at least this many bytes.
    Size(u64),
}

/// Errors in option values.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CliError {
    /// A size such as `2G` could not be parsed.
    #[error("invalid size {0:?}: expected a number with an optional K, M, G or T suffix")]
    Size(String),
    /// A DAX policy could not be parsed.
    #[error("invalid DAX policy {0:?}: expected auto, always, never, xattr or size:N")]
    DaxPolicy(String),
    /// Neither a socket path nor a file descriptor was given.
    #[error("either --socket-path or --fd is needed")]
    NoSocket,
}

/// Parses `--xattrmap` ([`XattrMap::parse`]).
pub fn parse_xattrmap(s: &str) -> Result<XattrMap, XattrMapError> {
    XattrMap::parse(s)
}

/// `--modcaps`: changes to the default capability set, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModCaps(pub Vec<Modification>);

/// Parses `--modcaps` ([`capabilities::parse_modcaps`]).
pub fn parse_modcaps(s: &str) -> Result<ModCaps, capabilities::CapabilitiesError> {
    capabilities::parse_modcaps(s).map(ModCaps)
}

/// Parses a size with an optional binary suffix (`K`, `M`, `G`, `T`, case-insensitive, with or
/// without a trailing `B`/`iB`).
pub fn parse_size(s: &str) -> Result<u64, CliError> {
    let err = || CliError::Size(s.to_string());
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(err()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// Parses `--dax-policy`.
pub fn parse_dax_policy(s: &str) -> Result<DaxPolicy, CliError> {
    match s {
        "auto" => Ok(DaxPolicy::Auto),
        "always" => Ok(DaxPolicy::Always),
        "never" => Ok(DaxPolicy::Never),
        "xattr" => Ok(DaxPolicy::Xattr),
        _ => match s.strip_prefix("size:") {
            Some(n) => parse_size(n)
                .map(DaxPolicy::Size)
                .map_err(|_| CliError::DaxPolicy(s.to_string())),
            None => Err(CliError::DaxPolicy(s.to_string())),
        },
    }
}

/// `vfsdaxd` options.
#[derive(Debug, Parser)]
#[command(
    name = "vfsdaxd",
    version,
    about = "A vhost-user virtio-fs daemon with DAX windows",
    after_help = "Attach to QEMU with: -chardev socket,id=fs0,path=SOCKET \
        -device vhost-user-fs-pci,chardev=fs0,tag=TAG plus guest RAM the daemon can map \
        (-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem)."
)]
pub struct Options {
    /// Directory to share with the guest.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "print_capabilities"
    )]
    pub shared_dir: Option<PathBuf>,
    /// vhost-user socket to listen on (a stale socket file is replaced; one in use is an error).
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,
    /// An already listening vhost-user socket, passed as this file descriptor.
    #[arg(long, value_name = "FD")]
    pub fd: Option<i32>,
    /// Group to own the socket file.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Offer the mount tag in the device's config space (the CONFIG protocol feature).
    /// QEMU 7.1 to 8.0 crash when a backend offers CONFIG: with those, leave this out and set
    /// tag= on the QEMU device instead.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Caching of names, attributes and data in the guest.
    #[arg(long, value_enum, default_value_t = CacheMode::Auto)]
    pub cache: CacheMode,
    /// Size of the DAX window (e.g. 2G); 0 disables DAX.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "0")]
    pub cache_size: u64,
    /// Which files use DAX in a guest mounted with dax=inode (Linux's default): auto, always,
    /// never, xattr or size:N. `auto` marks every regular file when the frontend can map any file
    /// range, and none when it maps only ranges inside files (QEMU 11.1); the others mark what
    /// they say among the files the frontend can map whole.
    #[arg(long, value_name = "POLICY", value_parser = parse_dax_policy, default_value = "auto")]
    pub dax_policy: DaxPolicy,
    /// With a DAX window: keep the VMM safe when a host process or the guest shrinks a mapped
    /// file (the window ranges past the new end are replaced before the size changes, or as
    /// soon as the kernel allows after). `required` also declines DAX for files that cannot be
    /// guarded before a truncation (filesystems without fanotify pre-content events, such as
    /// tmpfs).
    #[arg(long, value_enum, default_value_t = TruncateGuard::On)]
    pub truncate_guard: TruncateGuard,
    /// What the truncation guard puts in place of the lost range: `zero` pages, or nothing
    /// (`unmap`).
    #[arg(long, value_enum, default_value_t = TruncateGuardAction::Zero)]
    pub truncate_guard_action: TruncateGuardAction,
    /// Worker threads serving the request queues; 0 serves each request on its queue's thread.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub thread_pool_size: usize,
    /// Number of request queues offered to the frontend.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=63))]
    pub num_request_queues: u16,
    /// Enable extended attributes.
    #[arg(long)]
    pub xattr: bool,
    /// Which extended attribute names the guest may use and their host names, virtiofsd's
    /// rules (e.g. `:map::user.virtiofs.:` keeps every guest attribute under
    /// `user.virtiofs.` on the host); implies `--xattr`. Without it: `user.*`, POSIX ACLs and
    /// `security.capability` pass, `trusted.*` is refused, other `security.*` and `system.*`
    /// are unsupported.
    #[arg(long, value_name = "MAP", value_parser = parse_xattrmap)]
    pub xattrmap: Option<XattrMap>,
    /// Refuse every write to the share.
    #[arg(long)]
    pub readonly: bool,
    /// Tell the guest about submounts so it gives them their own st_dev.
    #[arg(long)]
    pub announce_submounts: bool,
    /// Refuse the guest's MKNOD of character and block devices (whiteouts stay allowed). The
    /// daemon never opens a device node for the guest either way; without this flag, mount the
    /// share `nodev` on the host if host users must not open the nodes a guest makes.
    #[arg(long)]
    pub deny_device_nodes: bool,
    /// Let the guest open files with O_DIRECT.
    #[arg(long)]
    pub allow_direct_io: bool,
    /// Let the guest use writeback caching.
    #[arg(long)]
    pub writeback: bool,
    /// Log level: error, warn, info, debug, trace or off.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,
    /// Raise the open-file limit to this (default: the hard limit).
    #[arg(long, value_name = "N")]
    pub rlimit_nofile: Option<u64>,
    /// Print the vhost-user backend capabilities as JSON and exit.
    #[arg(long, exclusive = true)]
    pub print_capabilities: bool,
    /// Process sandbox before serving: `namespace` (the default: new mount, PID, network and
    /// IPC namespaces with the share as the root; needs CAP_SYS_ADMIN), `chroot` (chroot into
    /// the share; needs CAP_SYS_CHROOT) or `none` (the last value given wins).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SandboxMode::Namespace, overrides_with = "sandbox")]
    pub sandbox: SandboxMode,
    /// Change the capabilities the daemon keeps once it serves (by default virtiofsd's set:
    /// chown, dac_override, fowner, fsetid, mknod, setfcap, setgid, setuid), e.g.
    /// `--modcaps=+sys_ptrace:-mknod`.
    #[arg(long, value_name = "CAPS", value_parser = parse_modcaps, default_value = "")]
    pub modcaps: ModCaps,
    /// Seccomp filter: what happens to a system call outside the daemon's allowlist once it
    /// waits for the frontend: `kill` the process (the default), `trap` (log it, fail the
    /// call), `log` (allow and have the kernel log it) or `none` (x86_64 only; the last value
    /// given wins).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SeccompMode::Kill, overrides_with = "seccomp")]
    pub seccomp: SeccompMode,
}

impl Options {
    /// Checks combinations clap cannot express.
    pub fn validate(&self) -> Result<(), CliError> {
        if self.socket_path.is_none() && self.fd.is_none() {
            return Err(CliError::NoSocket);
        }
        Ok(())
    }
}

/// The JSON `--print-capabilities` prints (vhost-user "backend program conventions").
pub fn capabilities_json() -> &'static str {
    "{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("vfsdaxd").chain(args.iter().copied()))
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("8K"), Ok(8192));
        assert!(parse_size("2X").is_err());
        assert!(parse_size("").is_err());
        assert!(
            parse_size("99999999999T").is_err(),
            "overflow must be refused"
        );
    }

    #[test]
    fn dax_policies() {
        assert_eq!(parse_dax_policy("auto"), Ok(DaxPolicy::Auto));
        assert_eq!(parse_dax_policy("always"), Ok(DaxPolicy::Always));
        assert_eq!(parse_dax_policy("xattr"), Ok(DaxPolicy::Xattr));
        assert_eq!(parse_dax_policy("size:1M"), Ok(DaxPolicy::Size(1 << 20)));
        assert!(parse_dax_policy("size:").is_err());
        assert!(parse_dax_policy("sometimes").is_err());
    }

    #[test]
    fn virtiofsd_command_line_is_accepted() {
        let o = parse(&[
            "--socket-path=/tmp/s",
            "--shared-dir",
            "/srv",
            "--tag",
            "fs",
            "--cache",
            "never",
            "--thread-pool-size",
            "0",
            "--xattr",
            "--readonly",
            "--announce-submounts",
            "--allow-direct-io",
            "--writeback",
            "--log-level",
            "debug",
            "--rlimit-nofile",
            "4096",
            "--sandbox",
            "none",
            "--seccomp",
            "none",
            "--socket-group",
            "kvm",
        ])
        .unwrap();
        o.validate().unwrap();
        assert_eq!(o.cache, CacheMode::Never);
        assert_eq!(o.tag.as_deref(), Some("fs"));
        assert!(o.xattr && o.readonly && o.writeback && o.announce_submounts);
        assert_eq!(o.cache_size, 0);
    }

    #[test]
    fn sandbox_modes_are_virtiofsds() {
        for (arg, mode) in [
            ("none", SandboxMode::None),
            ("namespace", SandboxMode::Namespace),
            ("chroot", SandboxMode::Chroot),
        ] {
            let o = parse(&["--socket-path=/s", "--shared-dir=/", "--sandbox", arg]).unwrap();
            o.validate().unwrap();
            assert_eq!(o.sandbox, mode, "--sandbox {arg}");
        }
        let o = parse(&["--socket-path=/s", "--shared-dir=/"]).unwrap();
        assert_eq!(
            o.sandbox,
            SandboxMode::Namespace,
            "the default, as virtiofsd's"
        );
        // A later value replaces an earlier one (wrappers append to a default command line).
        let o = parse(&[
            "--socket-path=/s",
            "--shared-dir=/",
            "--sandbox=namespace",
            "--sandbox=none",
        ])
        .unwrap();
        assert_eq!(o.sandbox, SandboxMode::None, "the last value wins");
        let e = parse(&["--socket-path=/s", "--shared-dir=/", "--sandbox", "jail"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn seccomp_modes_are_virtiofsds() {
        for (arg, mode) in [
            ("none", SeccompMode::None),
            ("log", SeccompMode::Log),
            ("trap", SeccompMode::Trap),
            ("kill", SeccompMode::Kill),
        ] {
            let o = parse(&["--socket-path=/s", "--shared-dir=/", "--seccomp", arg]).unwrap();
            o.validate().unwrap();
            assert_eq!(o.seccomp, mode, "--seccomp {arg}");
        }
        let o = parse(&["--socket-path=/s", "--shared-dir=/"]).unwrap();
        assert_eq!(o.seccomp, SeccompMode::Kill, "the default, as virtiofsd's");
        let o = parse(&[
            "--socket-path=/s",
            "--shared-dir=/",
            "--seccomp=kill",
            "--seccomp=none",
        ])
        .unwrap();
        assert_eq!(o.seccomp, SeccompMode::None, "the last value wins");
        let e = parse(&["--socket-path=/s", "--shared-dir=/", "--seccomp", "allow"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn unknown_flags_and_missing_socket_are_errors() {
        let e = parse(&["--socket-path=/s", "--shared-dir=/", "--no-such-flag"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        let o = parse(&["--shared-dir=/"]).unwrap();
        assert_eq!(o.validate(), Err(CliError::NoSocket));
        assert!(parse(&["--socket-path=/s", "--fd=3", "--shared-dir=/"]).is_err());
        // One thread per queue, each named by a bit of a u64 mask, hiprio included.
        assert!(parse(&[
            "--socket-path=/s",
            "--shared-dir=/",
            "--num-request-queues=63"
        ])
        .is_ok());
        assert!(parse(&[
            "--socket-path=/s",
            "--shared-dir=/",
            "--num-request-queues=64"
        ])
        .is_err());
        assert!(parse(&[
            "--socket-path=/s",
            "--shared-dir=/",
            "--num-request-queues=0"
        ])
        .is_err());
    }

    #[test]
    fn print_capabilities_stands_alone() {
        assert!(parse(&["--print-capabilities"]).unwrap().print_capabilities);
        assert!(parse(&["--print-capabilities", "--xattr"]).is_err());
        assert!(
            parse(&["--socket-path=/s"]).is_err(),
            "--shared-dir is required"
        );
    }
}
