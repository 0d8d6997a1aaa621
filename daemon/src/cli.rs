//! Command line of `vfsdaxd`, compatible with `virtiofsd` for everything a VMM or libvirt passes.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use thiserror::Error;

use crate::capabilities::{self, Modification};
use crate::passthrough::xattrmap::{XattrMap, XattrMapError};
use crate::sandbox::SandboxMode;
use crate::seccomp::SeccompMode;

pub mod compat;
pub mod syslog;

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
    #[value(alias = "none")]
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
    /// No share was given.
    #[error("missing --shared-dir or -o source")]
    NoSharedDir,
    /// An option asks for what vfsdaxd does not do and starting without it would surprise.
    #[error("{0}")]
    Refused(String),
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

/// A feature negotiated with the guest at INIT, as virtiofsd's `--posix-acl` and
/// `--security-label` (`never`, `auto`: if the guest supports it, `always`: the guest must).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Negotiation {
    /// Not offered.
    #[default]
    Never,
    /// Offered if the guest supports it.
    Auto,
    /// Required from the guest.
    Always,
}

/// virtiofsd's `--inode-file-handles`: how inodes are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InodeFileHandles {
    /// `O_PATH` descriptors (what vfsdaxd does).
    Never,
    /// File handles where the filesystem has them, else `O_PATH` descriptors.
    Prefer,
    /// Deprecated alias of `prefer`.
    Fallback,
    /// File handles only.
    Mandatory,
}

/// virtiofsd's `--migration-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MigrationMode {
    /// Send the paths of the inodes the guest holds.
    FindPaths,
    /// Send file handles.
    FileHandles,
}

/// virtiofsd's `--migration-on-error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MigrationOnError {
    /// Fail the migration.
    Abort,
    /// Finish it; the guest gets errors for the inodes that could not be migrated.
    GuestError,
}

/// `vfsdaxd` options: virtiofsd 1.14's command line (every option, `-o` included; see
/// [`parse_args`] and `cli/compat.rs` for what each does here) and vfsdaxd's own (`--cache-size`,
/// `--dax-policy`, `--truncate-guard*`, `--num-request-queues`, `--deny-device-nodes`).
#[derive(Debug, Parser)]
#[command(
    name = "vfsdaxd",
    version,
    args_override_self = true,
    about = "A vhost-user virtio-fs daemon with DAX windows",
    after_help = "Attach to QEMU with: -chardev socket,id=fs0,path=SOCKET \
        -device vhost-user-fs-pci,chardev=fs0,tag=TAG plus guest RAM the daemon can map \
        (-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem)."
)]
pub struct Options {
    /// Directory to share with the guest (or `-o source=DIR`).
    #[arg(long, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,
    /// vhost-user socket to listen on (a stale socket file is replaced; one in use is an error).
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,
    /// vhost-user socket path [deprecated: --socket-path].
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket: Option<PathBuf>,
    /// An already listening vhost-user socket, passed as this file descriptor.
    #[arg(long, value_name = "FD")]
    pub fd: Option<i32>,
    /// Group to own the socket file (not with --fd: the socket is not ours).
    #[arg(long, value_name = "GROUP", conflicts_with = "fd")]
    pub socket_group: Option<String>,
    /// Offer the mount tag in the device's config space (the CONFIG protocol feature).
    /// QEMU 7.1 to 8.0 crash when a backend offers CONFIG: with those, leave this out and set
    /// tag= on the QEMU device instead.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Caching of names, attributes and data in the guest (`none` is an alias of `never`).
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
    /// Also append every truncation guard report to FILE, one JSON line each, none dropped
    /// (the log's copies are rate-limited). Opened before the sandbox is entered.
    #[arg(long, value_name = "FILE")]
    pub truncate_guard_reports: Option<PathBuf>,
    /// Worker threads serving the request queues; 0 serves each request on its queue's thread.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub thread_pool_size: usize,
    /// Number of request queues offered to the frontend.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=63))]
    pub num_request_queues: u16,
    /// Enable extended attributes.
    #[arg(long)]
    pub xattr: bool,
    /// POSIX ACLs (`--posix-acl` alone is `always`; implies --xattr). Not implemented:
    /// `always` refuses to start, `auto` runs without (a warning says what that means).
    #[arg(long, value_enum, value_name = "never|auto|always", require_equals = true,
          num_args = 0..=1, default_missing_value = "always", default_value_t = Negotiation::Never)]
    pub posix_acl: Negotiation,
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
    /// Tell the guest which directories are mount points, so it gives them their own st_dev
    /// [default].
    #[arg(long, overrides_with = "no_announce_submounts")]
    pub announce_submounts: bool,
    /// Do not tell the guest which directories are mount points.
    #[arg(long, overrides_with = "announce_submounts")]
    pub no_announce_submounts: bool,
    /// How inodes are held: vfsdaxd always holds `O_PATH` descriptors (`never`); `prefer` (the
    /// default) and `fallback` run so with a warning, `mandatory` refuses to start.
    #[arg(long, value_enum, value_name = "MODE", require_equals = true)]
    pub inode_file_handles: Option<InodeFileHandles>,
    /// Refuse the guest's MKNOD of character and block devices (whiteouts stay allowed). The
    /// daemon never opens a device node for the guest either way; without this flag, mount the
    /// share `nodev` on the host if host users must not open the nodes a guest makes.
    #[arg(long)]
    pub deny_device_nodes: bool,
    /// With --cache=never or metadata: let the guest mmap files shared
    /// (`FUSE_DIRECT_IO_ALLOW_MMAP`); only when nothing else changes the share.
    #[arg(long)]
    pub allow_mmap: bool,
    /// Do not offer READDIRPLUS (never offered with --cache=never, as in virtiofsd).
    #[arg(long)]
    pub no_readdirplus: bool,
    /// Let the guest open files with O_DIRECT.
    #[arg(long)]
    pub allow_direct_io: bool,
    /// Let the guest use writeback caching.
    #[arg(long)]
    pub writeback: bool,
    /// Log level: error, warn, info, debug, trace or off.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,
    /// Log to syslog (/dev/log, connected before the sandbox) instead of standard error.
    #[arg(long)]
    pub syslog: bool,
    /// Raise the open-file limit to this; 0 leaves it unchanged (default: the hard limit).
    #[arg(long, value_name = "N")]
    pub rlimit_nofile: Option<u64>,
    /// Print the vhost-user backend capabilities as JSON and exit.
    #[arg(long)]
    pub print_capabilities: bool,
    /// Process sandbox before serving: `namespace` (the default: new mount, PID, network and
    /// IPC namespaces with the share as the root; needs CAP_SYS_ADMIN), `chroot` (chroot into
    /// the share; needs CAP_SYS_CHROOT) or `none`.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SandboxMode::Namespace)]
    pub sandbox: SandboxMode,
    /// Change the capabilities the daemon keeps once it serves (by default virtiofsd's set:
    /// chown, dac_override, fowner, fsetid, mknod, setfcap, setgid, setuid), e.g.
    /// `--modcaps=+sys_ptrace:-mknod`.
    #[arg(long, value_name = "CAPS", value_parser = parse_modcaps, default_value = "")]
    pub modcaps: ModCaps,
    /// Seccomp filter: what happens to a system call outside the daemon's allowlist once it
    /// waits for the frontend: `kill` the process (the default), `trap` (log it, fail the
    /// call), `log` (allow and have the kernel log it) or `none` (x86_64 only).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SeccompMode::Kill)]
    pub seccomp: SeccompMode,
    /// Options in virtiofsd's legacy format, e.g. `-o source=DIR,cache=none,xattr`
    /// [deprecated].
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub compat_options: Vec<String>,
    /// Log level debug [deprecated: --log-level=debug].
    #[arg(short = 'd')]
    pub compat_debug: bool,
    /// No effect: vfsdaxd runs in the foreground [deprecated].
    #[arg(short = 'f')]
    pub compat_foreground: bool,
    /// Do not offer HANDLE_KILLPRIV_V2 [default].
    #[arg(long, overrides_with = "killpriv_v2")]
    pub no_killpriv_v2: bool,
    /// Offer HANDLE_KILLPRIV_V2: the guest leaves clearing set-user-id/set-group-id on writes,
    /// truncations and chowns to the daemon.
    #[arg(long, overrides_with = "no_killpriv_v2")]
    pub killpriv_v2: bool,
    /// Security labels of new files (`--security-label` alone is `always`; implies --xattr).
    /// Not implemented: `always` refuses to start, `auto` runs without (with a warning).
    #[arg(long, value_enum, value_name = "never|auto|always", require_equals = true,
          num_args = 0..=1, default_missing_value = "always", default_value_t = Negotiation::Never)]
    pub security_label: Negotiation,
    /// virtiofsd's user-namespace uid mapping `:namespace_uid:host_uid:count:`. Not
    /// supported: refuses to start.
    #[arg(long, value_name = "MAP", value_parser = compat::parse_id_map)]
    pub uid_map: Vec<IdMap>,
    /// virtiofsd's user-namespace gid mapping `:namespace_gid:host_gid:count:`. Not
    /// supported: refuses to start.
    #[arg(long, value_name = "MAP", value_parser = compat::parse_id_map)]
    pub gid_map: Vec<IdMap>,
    /// virtiofsd's uid translation `TYPE:SOURCE:TARGET:COUNT`. Not supported: refuses to
    /// start.
    #[arg(long, value_name = "MAP", value_parser = compat::parse_translation)]
    pub translate_uid: Vec<String>,
    /// virtiofsd's gid translation `TYPE:SOURCE:TARGET:COUNT`. Not supported: refuses to
    /// start.
    #[arg(long, value_name = "MAP", value_parser = compat::parse_translation)]
    pub translate_gid: Vec<String>,
    /// Pass the guest's O_NOATIME to the host (what vfsdaxd always does).
    #[arg(long)]
    pub preserve_noatime: bool,
    /// virtiofsd's migration state format. vfsdaxd has no migration: no effect (a warning).
    #[arg(long, value_enum, value_name = "MODE")]
    pub migration_mode: Option<MigrationMode>,
    /// virtiofsd's reaction to migration errors. No effect here (a warning).
    #[arg(long, value_enum, value_name = "ACTION")]
    pub migration_on_error: Option<MigrationOnError>,
    /// virtiofsd's migration check of inode identities. No effect here (a warning).
    #[arg(long)]
    pub migration_verify_handles: bool,
    /// virtiofsd's migration re-check of paths at switch-over. No effect here (a warning).
    #[arg(long)]
    pub migration_confirm_paths: bool,
}

/// A range of `--uid-map`/`--gid-map`: `:first_inside:first_outside:count:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// How many.
    pub count: u32,
}

/// Parses the command line: clap, then the `-o` options translated into the same fields
/// (they win over the separate options, as in virtiofsd), `-d` and `--socket` folded in.
/// An invalid `-o` item is a usage error, as in virtiofsd.
pub fn parse_args<I, T>(args: I) -> Result<Options, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut o = Options::try_parse_from(args)?;
    compat::apply(&mut o).map_err(|e| {
        use clap::CommandFactory;
        Options::command().error(e.kind(), e.to_string())
    })?;
    if o.compat_debug {
        o.log_level = log::LevelFilter::Debug;
    }
    if o.socket_path.is_none() {
        o.socket_path = o.socket.clone();
    }
    Ok(o)
}

impl Options {
    /// Checks combinations clap cannot express, and refuses the options whose absence would
    /// be a security or correctness surprise ([`compat::refusals`]).
    pub fn validate(&self) -> Result<(), CliError> {
        if self.shared_dir.is_none() {
            return Err(CliError::NoSharedDir);
        }
        if self.socket_path.is_none() && self.socket.is_none() && self.fd.is_none() {
            return Err(CliError::NoSocket);
        }
        match compat::refusals(self).into_iter().next() {
            Some(r) => Err(CliError::Refused(r)),
            None => Ok(()),
        }
    }

    /// The warnings to log at start, one per option accepted without its full effect
    /// ([`compat::warnings`]).
    pub fn warnings(&self) -> Vec<String> {
        compat::warnings(self)
    }

    /// Whether directories on other mounts are announced (`FUSE_SUBMOUNTS`): on unless
    /// `--no-announce-submounts`, as in virtiofsd 1.14.
    pub fn announces_submounts(&self) -> bool {
        !self.no_announce_submounts
    }

    /// Whether the xattr opcodes are served: `--xattr`, or implied by `--xattrmap`,
    /// `--posix-acl` or `--security-label` (as in virtiofsd).
    pub fn xattr_enabled(&self) -> bool {
        self.xattr
            || self.xattrmap.is_some()
            || self.posix_acl != Negotiation::Never
            || self.security_label != Negotiation::Never
    }

    /// Whether READDIRPLUS is offered: not with `--no-readdirplus`, nor with `--cache=never`
    /// (its attributes would expire at once), as in virtiofsd.
    pub fn readdirplus(&self) -> bool {
        !self.no_readdirplus && self.cache != CacheMode::Never
    }
}

/// The JSON `--print-capabilities` prints (vhost-user "backend program conventions"): only
/// what is true. `separate-options`: virtiofsd's separate options are understood, so libvirt
/// passes `--shared-dir` & co. instead of `-o`. Not listed: `migrate-precopy` (no vhost-user
/// device state, so no migration), `posix-acl-negotiation-mode` and
/// `security-label-negotiation-mode` (the syntax is accepted, the features are not there).
pub fn capabilities_json() -> &'static str {
    "{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        parse_args(std::iter::once("vfsdaxd").chain(args.iter().copied()))
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
    fn print_capabilities_needs_nothing_else() {
        assert!(parse(&["--print-capabilities"]).unwrap().print_capabilities);
        // As virtiofsd: other options may come along (and are not checked).
        assert!(parse(&["--print-capabilities", "--xattr"]).is_ok());
        let o = parse(&["--socket-path=/s"]).unwrap();
        assert_eq!(o.validate(), Err(CliError::NoSharedDir));
        let json: serde_json::Value = serde_json::from_str(capabilities_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "fs", "features": ["separate-options"]})
        );
    }

    /// Every option of virtiofsd 1.14's `--help`, in its spelling, with its default when not
    /// given.
    #[test]
    fn defaults_are_virtiofsds() {
        let o = parse(&["--socket-path=/s", "--shared-dir=/x"]).unwrap();
        o.validate().unwrap();
        assert_eq!(o.cache, CacheMode::Auto);
        assert_eq!(o.thread_pool_size, 0);
        assert!(!o.xattr_enabled() && !o.readonly && !o.writeback && !o.allow_direct_io);
        assert_eq!(o.posix_acl, Negotiation::Never);
        assert_eq!(o.security_label, Negotiation::Never);
        assert_eq!(o.sandbox, SandboxMode::Namespace);
        assert_eq!(o.seccomp, SeccompMode::Kill);
        assert!(o.announces_submounts(), "on by default in virtiofsd 1.14");
        assert!(!o.killpriv_v2, "off by default in virtiofsd 1.14");
        assert!(o.readdirplus() && !o.allow_mmap && !o.syslog && !o.preserve_noatime);
        assert_eq!(o.log_level, log::LevelFilter::Info);
        assert_eq!(o.inode_file_handles, None, "virtiofsd's prefer, not said");
        assert_eq!(o.migration_mode, None);
        assert!(o.uid_map.is_empty() && o.translate_uid.is_empty());
        assert_eq!(o.rlimit_nofile, None);
        let o = parse(&[
            "--socket-path=/s",
            "--shared-dir=/x",
            "--announce-submounts",
            "--no-announce-submounts",
            "--killpriv-v2",
            "--cache=never",
        ])
        .unwrap();
        assert!(!o.announces_submounts() && o.killpriv_v2);
        assert!(!o.readdirplus(), "never with --cache=never, as virtiofsd");
        let o = parse(&[
            "--socket-path=/s",
            "--shared-dir=/x",
            "--no-announce-submounts",
            "--announce-submounts",
            "--killpriv-v2",
            "--no-killpriv-v2",
        ])
        .unwrap();
        assert!(
            o.announces_submounts() && !o.killpriv_v2,
            "the last one wins"
        );
        let o = parse(&[
            "--socket-path=/s",
            "--shared-dir=/x",
            "--posix-acl=auto",
            "--security-label=never",
            "--cache",
            "none",
            "--cache",
            "metadata",
            "--uid-map=:0:1:1:",
            "--uid-map=:1:2:1:",
            "--allow-mmap",
            "--no-readdirplus",
            "--syslog",
            "--preserve-noatime",
            "--inode-file-handles=never",
            "--migration-mode=find-paths",
            "--migration-on-error=guest-error",
            "--migration-verify-handles",
            "--migration-confirm-paths",
            "-f",
            "-V",
        ]);
        // -V prints the version (clap's DisplayVersion) once the rest parsed.
        assert_eq!(
            o.unwrap_err().kind(),
            clap::error::ErrorKind::DisplayVersion
        );
    }

    #[test]
    fn repeated_options_take_the_last_value_and_maps_accumulate() {
        let o = parse(&[
            "--socket-path=/s",
            "--shared-dir=/x",
            "--cache",
            "none",
            "--cache",
            "metadata",
            "--thread-pool-size=4",
            "--thread-pool-size=8",
            "--uid-map=:0:1:1:",
            "--uid-map=:1:2:1:",
            "-o",
            "xattr",
            "-o",
            "writeback",
        ])
        .unwrap();
        assert_eq!(o.cache, CacheMode::Metadata);
        assert_eq!(o.thread_pool_size, 8);
        assert_eq!(o.uid_map.len(), 2);
        assert!(o.xattr && o.writeback, "every -o applies");
        assert_eq!(
            parse(&["--socket-path=/s", "--cache=none"]).unwrap().cache,
            CacheMode::Never,
            "none, libvirt's name, is never"
        );
    }

    #[test]
    fn socket_forms() {
        let o = parse(&["--socket=/old", "--shared-dir=/x"]).unwrap();
        o.validate().unwrap();
        assert_eq!(o.socket_path.as_deref(), Some("/old".as_ref()));
        let o = parse(&["--socket=/old", "--socket-path=/new", "--shared-dir=/x"]).unwrap();
        assert_eq!(o.socket_path.as_deref(), Some("/new".as_ref()));
        assert!(parse(&["--socket=/old", "--fd=3", "--shared-dir=/x"]).is_err());
        assert!(parse(&["--fd=3", "--socket-group=kvm", "--shared-dir=/x"]).is_err());
    }
}
