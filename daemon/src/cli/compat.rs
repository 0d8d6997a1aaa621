//! virtiofsd 1.14 compatibility: the legacy `-o` options translated into [`Options`], and the
//! pure tables of what vfsdaxd does with the virtiofsd options it does not implement: a warning
//! logged once at start ([`warnings`]) or a refusal to start ([`refusals`]).
//!
//! Refused, because running without them would surprise in a way that matters:
//! - `--uid-map`/`--gid-map`, `--translate-uid`/`--translate-gid`: the guest's ids would reach
//!   the host unchanged where the administrator asked for them to be mapped, squashed or
//!   forbidden (e.g. guest root creating files owned by host root).
//! - `--inode-file-handles=mandatory`: asked for precisely so the daemon holds no descriptor
//!   per inode (NFS silly renames, descriptor limits); vfsdaxd always holds one.
//! - `--posix-acl=always`, `--security-label=always`: "always" means the guest must get the
//!   feature; vfsdaxd never offers it (the `auto` forms run without it, with a warning).
//! - `-o flock`, `-o posix_lock`: host-wide locks; unknown to virtiofsd 1.14 as well.

use thiserror::Error;

use super::{CacheMode, InodeFileHandles, MigrationMode, Negotiation, Options};
use crate::sandbox::SandboxMode;

/// An invalid `-o` item (reported as a usage error, as virtiofsd does).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompatError {
    /// `-o NAME=VALUE` with a value NAME does not take.
    #[error("Invalid compat value '{value}' for '-o {name}'{why}")]
    Value {
        /// The option.
        name: String,
        /// The value.
        value: String,
        /// More, after a colon (may be empty).
        why: String,
    },
    /// `-o ITEM` that virtiofsd 1.14 does not know either.
    #[error("Invalid compat argument '-o {item}'{why}")]
    Argument {
        /// The item.
        item: String,
        /// More, after a colon (may be empty).
        why: String,
    },
}

impl CompatError {
    /// The clap error kind it is reported as.
    pub fn kind(&self) -> clap::error::ErrorKind {
        match self {
            CompatError::Value { .. } => clap::error::ErrorKind::InvalidValue,
            CompatError::Argument { .. } => clap::error::ErrorKind::UnknownArgument,
        }
    }
}

fn value_error(name: &str, value: &str, why: &str) -> CompatError {
    CompatError::Value {
        name: name.into(),
        value: value.into(),
        why: why.into(),
    }
}

/// Splits one `-o` argument at its commas; `,,` is a comma inside an item (libvirt writes a
/// comma in the share's path so, QEMU's convention; virtiofsd 1.14 would split it).
pub fn split_items(arg: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                items.last_mut().expect("never empty").push(',');
            }
            ',' => items.push(String::new()),
            c => items.last_mut().expect("never empty").push(c),
        }
    }
    items
}

/// Applies every `-o` item, in order, over what the separate options set: virtiofsd 1.14's
/// items and values exactly (`cache=none` is `--cache=never`, `sandbox=` takes `namespace` or
/// `chroot`, `loglevel=` takes `debug`, `info`, `warn` or `err`).
pub fn apply(o: &mut Options) -> Result<(), CompatError> {
    let args = o.compat_options.clone();
    for item in args.iter().flat_map(|a| split_items(a)) {
        match item.split_once('=') {
            Some((name, value)) => apply_pair(o, name, value)?,
            None => apply_single(o, &item)?,
        }
    }
    Ok(())
}

fn apply_pair(o: &mut Options, name: &str, value: &str) -> Result<(), CompatError> {
    match name {
        "source" => o.shared_dir = Some(value.into()),
        "cache" => {
            o.cache = match value {
                "auto" => CacheMode::Auto,
                "always" => CacheMode::Always,
                "none" => CacheMode::Never,
                "metadata" => CacheMode::Metadata,
                _ => return Err(value_error(name, value, "")),
            }
        }
        "loglevel" => {
            o.log_level = match value {
                "debug" => log::LevelFilter::Debug,
                "info" => log::LevelFilter::Info,
                "warn" => log::LevelFilter::Warn,
                "err" => log::LevelFilter::Error,
                _ => return Err(value_error(name, value, "")),
            }
        }
        "sandbox" => {
            o.sandbox = match value {
                "namespace" => SandboxMode::Namespace,
                "chroot" => SandboxMode::Chroot,
                _ => return Err(value_error(name, value, "")),
            }
        }
        "modcaps" => {
            o.modcaps = super::parse_modcaps(value)
                .map_err(|e| value_error(name, value, &format!(": {e}")))?
        }
        "xattrmap" => {
            o.xattrmap = Some(
                super::parse_xattrmap(value)
                    .map_err(|e| value_error(name, value, &format!(": {e}")))?,
            )
        }
        _ => {
            return Err(CompatError::Argument {
                item: format!("{name}={value}"),
                why: String::new(),
            })
        }
    }
    Ok(())
}

fn apply_single(o: &mut Options, item: &str) -> Result<(), CompatError> {
    match item {
        "xattr" => o.xattr = true,
        "no_xattr" => o.xattr = false,
        "readdirplus" => o.no_readdirplus = false,
        "no_readdirplus" => o.no_readdirplus = true,
        "writeback" => o.writeback = true,
        "no_writeback" => o.writeback = false,
        "allow_direct_io" => o.allow_direct_io = true,
        "no_allow_direct_io" => o.allow_direct_io = false,
        "announce_submounts" => {
            o.announce_submounts = true;
            o.no_announce_submounts = false;
        }
        "killpriv_v2" => {
            o.killpriv_v2 = true;
            o.no_killpriv_v2 = false;
        }
        "no_killpriv_v2" => {
            o.killpriv_v2 = false;
            o.no_killpriv_v2 = true;
        }
        "posix_acl" => o.posix_acl = Negotiation::Always,
        "no_posix_acl" => o.posix_acl = Negotiation::Never,
        "security_label" => o.security_label = Negotiation::Always,
        "no_security_label" => o.security_label = Negotiation::Never,
        // What vfsdaxd does anyway: a guest's locks stay inside the guest.
        "no_posix_lock" | "no_flock" => {}
        "flock" | "posix_lock" => {
            return Err(CompatError::Argument {
                item: item.into(),
                why: ": host-wide locks are not implemented (nor by virtiofsd 1.14); a \
                      guest's locks stay local to the guest"
                    .into(),
            })
        }
        _ => {
            return Err(CompatError::Argument {
                item: item.into(),
                why: String::new(),
            })
        }
    }
    Ok(())
}

/// Parses `--uid-map`/`--gid-map`: `:inside:outside:count:` (virtiofsd's syntax; the
/// separator is the first character).
pub fn parse_id_map(s: &str) -> Result<super::IdMap, String> {
    let bad = || format!("invalid id map {s:?}: expected :inside:outside:count:");
    let sep = s.chars().next().ok_or_else(bad)?;
    let body = s
        .strip_prefix(sep)
        .and_then(|b| b.strip_suffix(sep))
        .ok_or_else(bad)?;
    let n: Vec<u32> = body
        .split(sep)
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    match n[..] {
        [inside, outside, count] if count > 0 => Ok(super::IdMap {
            inside,
            outside,
            count,
        }),
        _ => Err(bad()),
    }
}

/// Checks the syntax of `--translate-uid`/`--translate-gid`:
/// `guest|host|squash-guest|squash-host|forbid-guest|map:FROM:TO:COUNT`.
pub fn parse_translation(s: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "invalid translation {s:?}: expected TYPE:FROM:TO:COUNT with TYPE guest, host, \
             squash-guest, squash-host, forbid-guest or map"
        )
    };
    let parts: Vec<&str> = s.split(':').collect();
    match parts[..] {
        [kind, a, b, c]
            if matches!(
                kind,
                "guest" | "host" | "squash-guest" | "squash-host" | "forbid-guest" | "map"
            ) && [a, b, c].iter().all(|x| x.parse::<u32>().is_ok()) =>
        {
            Ok(s.to_string())
        }
        _ => Err(bad()),
    }
}

/// Why `o` must not start: each option vfsdaxd does not implement and whose absence would be
/// a security or correctness surprise (see the module documentation), in a fixed order.
pub fn refusals(o: &Options) -> Vec<String> {
    let mut r = Vec::new();
    for (flag, maps) in [("--uid-map", &o.uid_map), ("--gid-map", &o.gid_map)] {
        if !maps.is_empty() {
            r.push(format!(
                "{flag}: not supported (vfsdaxd does not run in a user namespace): refusing to \
                 start, as the guest's ids would reach the host unmapped"
            ));
        }
    }
    for (flag, maps) in [
        ("--translate-uid", &o.translate_uid),
        ("--translate-gid", &o.translate_gid),
    ] {
        if !maps.is_empty() {
            r.push(format!(
                "{flag}: not supported yet: refusing to start, as the guest's ids would reach \
                 the host untranslated"
            ));
        }
    }
    if o.inode_file_handles == Some(InodeFileHandles::Mandatory) {
        r.push(
            "--inode-file-handles=mandatory: file handles are not implemented (vfsdaxd holds an \
             O_PATH descriptor per inode the guest knows): refusing to start rather than hold \
             the descriptors this option is meant to avoid"
                .into(),
        );
    }
    for (flag, mode, what) in [
        (
            "--posix-acl",
            o.posix_acl,
            "POSIX ACLs (FUSE_POSIX_ACL) are not implemented",
        ),
        (
            "--security-label",
            o.security_label,
            "security labels (FUSE_SECURITY_CTX) are not implemented",
        ),
    ] {
        if mode == Negotiation::Always {
            r.push(format!(
                "{flag}=always: {what}: refusing to start rather than serve without what \
                 `always` requires ({flag}=auto runs without it)"
            ));
        }
    }
    if o.migration_mode == Some(MigrationMode::FileHandles) {
        // virtiofsd's own check.
        for (set, flag) in [
            (o.migration_confirm_paths, "--migration-confirm-paths"),
            (o.migration_verify_handles, "--migration-verify-handles"),
        ] {
            if set {
                r.push(format!(
                    "Cannot use {flag} with --migration-mode=file-handles (because it is \
                     unnecessary)"
                ));
            }
        }
    }
    r
}

/// The warnings for `o`, logged once each at start: deprecated forms, and the virtiofsd options
/// accepted without their effect, each saying what is not done and what that means.
pub fn warnings(o: &Options) -> Vec<String> {
    let mut w = Vec::new();
    if !o.compat_options.is_empty() {
        w.push(
            "-o: deprecated option format (virtiofsd's legacy one): pass the options \
             separately, e.g. --cache=auto instead of -o cache=auto"
                .into(),
        );
    }
    if o.compat_debug {
        w.push("-d: deprecated: use --log-level=debug".into());
    }
    if o.compat_foreground {
        w.push("-f: deprecated and without effect: vfsdaxd always runs in the foreground".into());
    }
    if o.socket.is_some() {
        w.push("--socket: deprecated: use --socket-path".into());
    }
    if let Some(m @ (InodeFileHandles::Prefer | InodeFileHandles::Fallback)) = o.inode_file_handles
    {
        let (name, alias) = match m {
            InodeFileHandles::Fallback => (
                "fallback",
                " ('fallback' is a deprecated alias of 'prefer')",
            ),
            _ => ("prefer", ""),
        };
        w.push(format!(
            "--inode-file-handles={name}: file handles are not implemented: every inode the \
             guest knows is held as an O_PATH descriptor, as with --inode-file-handles=never\
             {alias}"
        ));
    }
    if o.posix_acl == Negotiation::Auto {
        w.push(
            "--posix-acl=auto: POSIX ACLs (FUSE_POSIX_ACL) are not implemented, the guest runs \
             without: its kernel checks only the mode bits (an ACL entry that denies access is \
             not enforced in the guest) and applies its umask where a default ACL should \
             decide; ACLs are still stored and read back as extended attributes"
                .into(),
        );
    }
    if o.security_label == Negotiation::Auto {
        w.push(
            "--security-label=auto: security labels (FUSE_SECURITY_CTX) are not implemented, \
             the guest runs without: files it creates get the host's default label, not the \
             one the guest's policy gives them"
                .into(),
        );
    }
    let migration = [
        ("--migration-mode", o.migration_mode.is_some()),
        ("--migration-on-error", o.migration_on_error.is_some()),
        ("--migration-verify-handles", o.migration_verify_handles),
        ("--migration-confirm-paths", o.migration_confirm_paths),
    ];
    for (flag, _) in migration.iter().filter(|(_, set)| *set) {
        w.push(format!(
            "{flag}: no effect: vfsdaxd does not implement migration (no vhost-user device \
             state, and --print-capabilities does not list migrate-precopy): a VM using this \
             device cannot be live-migrated"
        ));
    }
    if o.allow_mmap && !matches!(o.cache, CacheMode::Never | CacheMode::Metadata) {
        w.push(
            "--allow-mmap: no effect without --cache=never or --cache=metadata (the guest \
             already maps cached files)"
                .into(),
        );
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse_args;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        parse_args(std::iter::once("vfsdaxd").chain(args.iter().copied()))
    }

    fn ok(args: &[&str]) -> Options {
        let o = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        o.validate().unwrap_or_else(|e| panic!("{args:?}: {e}"));
        o
    }

    #[test]
    fn items_split_at_single_commas() {
        assert_eq!(split_items("source=/a,,b,xattr"), ["source=/a,b", "xattr"]);
        assert_eq!(split_items("a"), ["a"]);
        assert_eq!(split_items("a,"), ["a", ""]);
    }

    /// libvirt's `-o` form (qemu_virtiofs.c without "separate-options"): every item it writes.
    #[test]
    fn libvirts_legacy_items() {
        let o = ok(&[
            "--fd=3",
            "-o",
            "source=/srv/a,,b,cache=none,sandbox=chroot,xattr,no_flock,no_posix_lock",
            "--thread-pool-size=16",
            "-d",
        ]);
        assert_eq!(o.shared_dir.as_deref(), Some("/srv/a,b".as_ref()));
        assert_eq!(o.cache, CacheMode::Never);
        assert_eq!(o.sandbox, SandboxMode::Chroot);
        assert!(o.xattr_enabled());
        assert_eq!(o.thread_pool_size, 16);
        assert_eq!(o.log_level, log::LevelFilter::Debug);
        let o = ok(&[
            "--fd=3",
            "-o",
            "source=/s,cache=always,sandbox=namespace,no_xattr",
        ]);
        assert_eq!(o.cache, CacheMode::Always);
        assert_eq!(o.sandbox, SandboxMode::Namespace);
        assert!(!o.xattr_enabled());
        let o = ok(&["--fd=3", "-o", "source=/s,cache=auto"]);
        assert_eq!(o.cache, CacheMode::Auto);
    }

    #[test]
    fn every_virtiofsd_item() {
        let o = ok(&[
            "--socket-path=/s",
            "-o",
            "source=/x,cache=metadata,loglevel=warn,modcaps=+sys_admin:-mknod",
            "-o",
            "xattrmap=:map::user.virtiofs.:,writeback,allow_direct_io,no_readdirplus",
            "-o",
            "killpriv_v2,announce_submounts,no_posix_acl,no_security_label",
        ]);
        assert_eq!(o.cache, CacheMode::Metadata);
        assert_eq!(o.log_level, log::LevelFilter::Warn);
        assert_eq!(
            o.modcaps,
            crate::cli::parse_modcaps("+sys_admin:-mknod").unwrap()
        );
        assert!(o.xattrmap.is_some() && o.xattr_enabled());
        assert!(o.writeback && o.allow_direct_io && !o.readdirplus());
        assert!(o.killpriv_v2 && o.announces_submounts());
        let o = ok(&[
            "--socket-path=/s",
            "--shared-dir=/a",
            "--writeback",
            "--killpriv-v2",
            "-o",
            "source=/b,no_writeback,no_allow_direct_io,readdirplus,no_killpriv_v2,loglevel=err",
        ]);
        assert_eq!(o.shared_dir.as_deref(), Some("/b".as_ref()), "-o wins");
        assert!(!o.writeback && !o.killpriv_v2 && o.readdirplus());
        assert_eq!(o.log_level, log::LevelFilter::Error);
        // -d wins over every log level, as in virtiofsd.
        let o = ok(&["--socket-path=/s", "-d", "-o", "source=/b,loglevel=info"]);
        assert_eq!(o.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn invalid_items_are_usage_errors_like_virtiofsds() {
        use clap::error::ErrorKind;
        for (arg, kind, text) in [
            (
                "cache=never",
                ErrorKind::InvalidValue,
                "Invalid compat value 'never' for '-o cache'",
            ),
            ("sandbox=none", ErrorKind::InvalidValue, "'-o sandbox'"),
            ("loglevel=trace", ErrorKind::InvalidValue, "'-o loglevel'"),
            ("modcaps=+nope", ErrorKind::InvalidValue, "'-o modcaps'"),
            ("xattrmap=junk", ErrorKind::InvalidValue, "'-o xattrmap'"),
            (
                "vhost_user_socket=/s",
                ErrorKind::UnknownArgument,
                "Invalid compat argument",
            ),
            ("flock", ErrorKind::UnknownArgument, "host-wide locks"),
            ("posix_lock", ErrorKind::UnknownArgument, "'-o posix_lock'"),
            ("norace", ErrorKind::UnknownArgument, "'-o norace'"),
            ("source=/s,", ErrorKind::UnknownArgument, "'-o '"),
        ] {
            let e = parse(&["--socket-path=/s", "-o", arg]).unwrap_err();
            assert_eq!(e.kind(), kind, "{arg}");
            assert!(e.to_string().contains(text), "{arg}: {e}");
        }
    }

    #[test]
    fn refusals_table() {
        let base = ["--socket-path=/s", "--shared-dir=/x"];
        let refused = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            let o = parse(&args).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
            match o.validate() {
                Err(crate::cli::CliError::Refused(r)) => r,
                other => panic!("{extra:?}: {other:?}"),
            }
        };
        assert!(refused(&["--uid-map=:0:100000:65536:"]).starts_with("--uid-map: not supported"));
        assert!(refused(&["--gid-map=:0:100000:65536:"]).starts_with("--gid-map: not supported"));
        assert!(
            refused(&["--translate-uid=squash-guest:0:1000:4294967295"]).contains("untranslated")
        );
        assert!(refused(&["--translate-gid=map:0:1000:1"]).starts_with("--translate-gid"));
        assert!(refused(&["--inode-file-handles=mandatory"]).contains("refusing to start"));
        assert!(refused(&["--posix-acl"]).starts_with("--posix-acl=always: POSIX ACLs"));
        assert!(refused(&["--posix-acl=always"]).contains("--posix-acl=auto runs without"));
        assert!(refused(&["-o", "posix_acl"]).starts_with("--posix-acl=always"));
        assert!(refused(&["--security-label"]).starts_with("--security-label=always"));
        assert!(refused(&[
            "--migration-mode=file-handles",
            "--migration-verify-handles"
        ])
        .starts_with("Cannot use --migration-verify-handles"));
        // Bad syntax is clap's error.
        assert!(parse(&["--socket-path=/s", "--uid-map=0:1:2"]).is_err());
        assert!(parse(&["--socket-path=/s", "--translate-uid=squash:0:1:2"]).is_err());
        assert!(parse(&["--socket-path=/s", "--inode-file-handles", "never"]).is_err());
    }

    #[test]
    fn warnings_table() {
        let base = ["--socket-path=/s", "--shared-dir=/x"];
        let warned = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            ok(&args).warnings()
        };
        assert!(warned(&[]).is_empty(), "the defaults warn of nothing");
        assert!(warned(&[
            "--inode-file-handles=never",
            "--posix-acl=never",
            "--security-label=never",
            "--announce-submounts",
            "--no-killpriv-v2",
            "--killpriv-v2",
            "--no-readdirplus",
            "--preserve-noatime",
            "--syslog",
            "--cache=never",
            "--allow-mmap",
        ])
        .is_empty());
        for (extra, text) in [
            (&["-o", "source=/y"][..], "-o: deprecated option format"),
            (&["-d"][..], "-d: deprecated: use --log-level=debug"),
            (&["-f"][..], "-f: deprecated and without effect"),
            (
                &["--inode-file-handles=prefer"][..],
                "--inode-file-handles=prefer: file handles",
            ),
            (&["--inode-file-handles=fallback"][..], "deprecated alias"),
            (
                &["--posix-acl=auto"][..],
                "an ACL entry that denies access is not enforced",
            ),
            (&["--security-label=auto"][..], "host's default label"),
            (
                &["--migration-mode=find-paths"][..],
                "--migration-mode: no effect",
            ),
            (
                &["--migration-on-error=guest-error"][..],
                "cannot be live-migrated",
            ),
            (
                &["--migration-verify-handles"][..],
                "--migration-verify-handles: no effect",
            ),
            (
                &["--migration-confirm-paths"][..],
                "--migration-confirm-paths: no effect",
            ),
            (&["--allow-mmap"][..], "--allow-mmap: no effect without"),
        ] {
            let w = warned(extra);
            assert_eq!(w.len(), 1, "{extra:?}: {w:?}");
            assert!(w[0].contains(text), "{extra:?}: {w:?}");
        }
        let o = ok(&["--socket=/old", "--shared-dir=/x"]);
        assert_eq!(o.socket_path.as_deref(), Some("/old".as_ref()));
        assert_eq!(o.warnings(), ["--socket: deprecated: use --socket-path"]);
    }

    #[test]
    fn id_maps() {
        assert_eq!(
            parse_id_map(":0:100000:65536:"),
            Ok(crate::cli::IdMap {
                inside: 0,
                outside: 100000,
                count: 65536
            })
        );
        assert!(parse_id_map("/1/2/3/").is_ok());
        for bad in ["", ":0:1:", ":0:1:2", ":a:1:2:", ":0:1:0:"] {
            assert!(parse_id_map(bad).is_err(), "{bad:?}");
        }
        assert!(parse_translation("host:0:1:2").is_ok());
        assert!(parse_translation("forbid-guest:0:1:2").is_ok());
        assert!(parse_translation("map:0:1").is_err());
    }
}
