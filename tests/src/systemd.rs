//! Running `vfsdaxd` the way its systemd units (`contrib/vfsdaxd@.socket`,
//! `contrib/vfsdaxd@.service`) do, on a machine whose PID 1 may not be systemd: the units are
//! read, the service's `ExecStart=` line is expanded for an instance (specifiers, `$VAR`s), and
//! `systemd-socket-activate` hands it a listening socket as fd 3, as systemd does, with
//! `$NOTIFY_SOCKET` naming a datagram socket the test reads (`READY=1`).
//!
//! The service's hardening that can be reproduced without systemd is applied to the command
//! ([`Hardening::confine`]): the capability bounding set and no_new_privs (`setpriv`), and
//! new mount, network and UTS namespaces (`unshare`) with every mount but `/proc`, `/sys` and
//! `/dev` read-only and the `ReadWritePaths=` bound writable (`ProtectSystem=strict`). The
//! seccomp-based directives (`RestrictNamespaces=`, `RestrictAddressFamilies=`,
//! `MemoryDenyWriteExecute=`, ...) and the cgroup device policy are not reproduced.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The repository's `contrib/` directory (units, vhost-user descriptor).
pub fn contrib_dir() -> PathBuf {
    crate::bins::workspace_root().join("contrib")
}

/// A unit file: its sections in order, each with its assignments in order.
#[derive(Clone, Debug, Default)]
pub struct Unit {
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl Unit {
    /// Parses unit-file text: `[Section]` headers, `Key=value` lines, `#` and `;` comments,
    /// lines continued with a trailing backslash.
    pub fn parse(text: &str) -> Unit {
        let mut unit = Unit::default();
        let mut logical = String::new();
        for line in text.lines() {
            let line = line.trim_end();
            if logical.is_empty() && (line.trim_start().starts_with('#') || line.starts_with(';')) {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                logical.push_str(head);
                logical.push(' ');
                continue;
            }
            logical.push_str(line);
            let l = std::mem::take(&mut logical);
            let l = l.trim();
            if l.is_empty() {
                continue;
            }
            if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                unit.sections.push((name.to_string(), Vec::new()));
            } else if let (Some((key, value)), Some(section)) =
                (l.split_once('='), unit.sections.last_mut())
            {
                section
                    .1
                    .push((key.trim().to_string(), value.trim().to_string()));
            }
        }
        unit
    }

    /// Reads and parses the unit file at `path`.
    pub fn load(path: &Path) -> std::io::Result<Unit> {
        std::fs::read_to_string(path).map(|t| Unit::parse(&t))
    }

    /// Every value assigned to `key` in `section`, in order.
    pub fn values(&self, section: &str, key: &str) -> Vec<&str> {
        self.sections
            .iter()
            .filter(|(s, _)| s == section)
            .flat_map(|(_, kv)| kv.iter())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The last value assigned to `key` in `section`.
    pub fn value(&self, section: &str, key: &str) -> Option<&str> {
        self.values(section, key).last().copied()
    }

    /// A boolean setting (`yes`, `true`, `on`, `1`).
    pub fn flag(&self, section: &str, key: &str) -> bool {
        matches!(self.value(section, key), Some("yes" | "true" | "on" | "1"))
    }
}

/// `text` with the instance specifiers replaced: `%i` and `%I` (the names used here need no
/// escaping, so both are `instance`) and `%%`.
pub fn specifiers(text: &str, instance: &str) -> String {
    text.replace("%%", "\u{0}")
        .replace("%i", instance)
        .replace("%I", instance)
        .replace('\u{0}', "%")
}

/// The `Environment=` assignments of `[Service]` (`A=x B=y` on one line, later ones win).
fn service_environment(unit: &Unit) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for line in unit.values("Service", "Environment") {
        for word in line.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.trim_matches('"').to_string()));
        }
    }
    env
}

/// The service's `ExecStart=` command for `instance`, as systemd runs it: specifiers replaced,
/// a word that is `$VAR` split into the variable's words (nothing for an empty one), `${VAR}`
/// inside a word replaced by the value. Variables come from `env` (what an `EnvironmentFile=`
/// would give), then the unit's `Environment=`. Panics on what this does not implement (quotes,
/// several `ExecStart=` lines, a `-`/`@`/`!` prefix), so a unit using it is noticed.
pub fn exec_start(unit: &Unit, instance: &str, env: &[(&str, &str)]) -> Vec<String> {
    let lines: Vec<&str> = unit
        .values("Service", "ExecStart")
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one ExecStart= line expected: {lines:?}");
    let line = specifiers(lines[0], instance);
    assert!(
        !line.contains(['"', '\'']) && !line.starts_with(['-', '@', '!', ':', '+']),
        "ExecStart= uses quoting or a prefix the tests do not expand: {line}"
    );
    let mut vars = service_environment(unit);
    for (k, v) in env {
        vars.retain(|(key, _)| key != k);
        vars.push((k.to_string(), v.to_string()));
    }
    let lookup = |name: &str| {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut argv = Vec::new();
    for word in line.split_whitespace() {
        if let Some(name) = word.strip_prefix('$').filter(|n| !n.starts_with('{')) {
            argv.extend(lookup(name).split_whitespace().map(str::to_string));
            continue;
        }
        let mut out = String::new();
        let mut rest = word;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("unterminated ${") + start;
            out.push_str(&lookup(&rest[start + 2..end]));
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        argv.push(out);
    }
    argv
}

/// `argv` with every occurrence of each `from` replaced by its `to` (the installed paths by the
/// test's own: the binary, the share).
pub fn rewrite(argv: &[String], paths: &[(&str, &Path)]) -> Vec<OsString> {
    argv.iter()
        .map(|a| {
            let mut a = a.clone();
            for (from, to) in paths {
                a = a.replace(from, &to.to_string_lossy());
            }
            OsString::from(a)
        })
        .collect()
}

/// What of the service's hardening [`Hardening::confine`] reproduces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hardening {
    /// `CapabilityBoundingSet=`, as `setpriv` names them (`chown`, `sys_admin`); `None` when
    /// the unit does not restrict it.
    pub capabilities: Option<Vec<String>>,
    /// `NoNewPrivileges=yes`.
    pub no_new_privs: bool,
    /// `PrivateNetwork=yes`.
    pub private_network: bool,
    /// `ProtectHostname=yes`.
    pub private_uts: bool,
    /// `ProtectSystem=strict`: every mount read-only but the API file systems and
    /// `ReadWritePaths=`.
    pub read_only_system: bool,
    /// `ReadWritePaths=`, specifiers replaced.
    pub read_write_paths: Vec<String>,
}

impl Hardening {
    /// The hardening of the `[Service]` of `unit` for `instance`.
    pub fn of(unit: &Unit, instance: &str) -> Hardening {
        let caps = unit.values("Service", "CapabilityBoundingSet");
        let capabilities = (!caps.is_empty()).then(|| {
            let mut names: Vec<String> = Vec::new();
            for line in caps {
                assert!(!line.starts_with('~'), "a ~ bounding set is not reproduced");
                if line.is_empty() {
                    names.clear();
                }
                for cap in line.split_whitespace() {
                    let name = cap.trim_start_matches("CAP_").to_lowercase();
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
            names
        });
        Hardening {
            capabilities,
            no_new_privs: unit.flag("Service", "NoNewPrivileges"),
            private_network: unit.flag("Service", "PrivateNetwork"),
            private_uts: unit.flag("Service", "ProtectHostname"),
            read_only_system: unit.value("Service", "ProtectSystem") == Some("strict"),
            read_write_paths: unit
                .values("Service", "ReadWritePaths")
                .iter()
                .flat_map(|l| l.split_whitespace())
                .map(|p| specifiers(p.trim_start_matches('-'), instance))
                .collect(),
        }
    }

    /// `argv` run under this hardening: `unshare` (mount namespace, network and UTS ones as
    /// the unit says), a shell that binds each writable path onto itself and remounts every
    /// other mount read-only, then `setpriv` (bounding set, no_new_privs). `writable` are the
    /// `ReadWritePaths=` as the test placed them. Every program execs the next: the process
    /// keeps its pid and its descriptors (fd 3).
    pub fn confine(&self, writable: &[&Path], argv: Vec<OsString>) -> Vec<OsString> {
        let mut setpriv: Vec<OsString> = vec!["setpriv".into()];
        if let Some(caps) = &self.capabilities {
            let mut spec = String::from("--bounding-set=-all");
            for c in caps {
                spec.push_str(",+");
                spec.push_str(c);
            }
            setpriv.push(spec.into());
        }
        if self.no_new_privs {
            setpriv.push("--no-new-privs".into());
        }
        setpriv.push("--".into());
        setpriv.extend(argv);

        let mut out: Vec<OsString> = vec![
            "unshare".into(),
            "--mount".into(),
            "--propagation".into(),
            "slave".into(),
        ];
        if self.private_network {
            out.push("--net".into());
        }
        if self.private_uts {
            out.push("--uts".into());
        }
        // sh -c SCRIPT sh RO N PATH... PROGRAM ARGS...
        const SCRIPT: &str = r#"set -e
ro=$1; n=$2; shift 2
rw=""
while [ "$n" -gt 0 ]; do
    mount --bind "$1" "$1"
    rw="$rw $1"; shift; n=$((n - 1))
done
if [ "$ro" = 1 ]; then
    awk '{ print $5 }' /proc/self/mountinfo | sort -u | while read -r mp; do
        case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
        case " $rw " in *" $mp "*) continue ;; esac
        if [ "$mp" = / ]; then
            mount -o remount,bind,ro /
        else
            mount -o remount,bind,ro "$mp" 2>/dev/null || true
        fi
    done
fi
exec "$@""#;
        out.extend([
            "--".into(),
            "sh".into(),
            "-c".into(),
            SCRIPT.into(),
            "sh".into(),
            if self.read_only_system { "1" } else { "0" }.into(),
            writable.len().to_string().into(),
        ]);
        out.extend(writable.iter().map(|p| p.as_os_str().to_owned()));
        out.extend(setpriv);
        out
    }
}

/// The command that runs `argv` the way a `.socket` unit starts its service:
/// `systemd-socket-activate` listens on `socket` and, when a client connects, execs `argv` with
/// the listening socket as fd 3 (`LISTEN_FDS=1`) and `NOTIFY_SOCKET=notify`.
pub fn socket_activate(tool: &Path, socket: &Path, notify: &Path, argv: &[OsString]) -> Command {
    let mut cmd = Command::new(tool);
    let mut env = OsString::from("NOTIFY_SOCKET=");
    env.push(notify);
    cmd.arg("--listen")
        .arg(socket)
        .arg("--setenv")
        .arg(env)
        .arg("--")
        .args(argv);
    cmd
}

/// A `$NOTIFY_SOCKET` listener: the datagram socket a `Type=notify` service reports to.
#[derive(Debug)]
pub struct NotifyListener {
    sock: UnixDatagram,
    path: PathBuf,
    received: Vec<String>,
}

impl NotifyListener {
    /// Binds the socket at `path`.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        Ok(NotifyListener {
            sock: UnixDatagram::bind(path)?,
            path: path.to_path_buf(),
            received: Vec::new(),
        })
    }

    /// Its path (the value of `$NOTIFY_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for a message with the line `line` (e.g. `READY=1`); every
    /// message received so far, or an error naming them.
    pub fn wait_for(&mut self, line: &str, timeout: Duration) -> Result<&[String], String> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            if self.received.iter().any(|m| m.lines().any(|l| l == line)) {
                return Ok(&self.received);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no {line} within {timeout:?}; received: {:?}",
                    self.received
                ));
            }
            self.sock
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            match self.sock.recv(&mut buf) {
                Ok(n) => self
                    .received
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("receiving on {}: {e}", self.path.display())),
            }
        }
    }
}

/// `name` on `PATH` or in the usual system directories (`/usr/sbin` is often not on a
/// non-login `PATH`).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| crate::guest::process::is_executable(p))
}

pub use crate::require::skip;

/// The paths of `tools`, or `None` after [`skip`] naming the missing ones (and the package
/// that provides them, from `packages`: `(tool, package)`).
pub fn require_tools(test: &str, tools: &[(&str, &str)]) -> Option<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (tool, package) in tools {
        match find_tool(tool) {
            Some(p) => found.push(p),
            None => missing.push(format!("{tool} (Debian package {package})")),
        }
    }
    if missing.is_empty() {
        Some(found)
    } else {
        skip(
            test,
            &format!(
                "not installed: {} (scripts/deps.sh installs them)",
                missing.join(", ")
            ),
        );
        None
    }
}

/// Whether the process runs as root, or `false` after [`skip`] (the daemon's sandbox, its
/// capabilities and the mount namespace of the hardening need it).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(
        test,
        "not root: the unit's daemon runs as root (--sandbox=namespace, capabilities)",
    );
    false
}

/// A scratch root for `systemd-analyze --root=`: the host's targets and slices (what the
/// units' default dependencies need; `sockets.target`, `sysinit.target`, ...) copied into
/// `root/usr/lib/systemd/system`, next to whatever the caller puts there.
pub fn populate_unit_root(root: &Path) -> std::io::Result<PathBuf> {
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units)?;
    let host = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_dir());
    if let Some(host) = host {
        for e in std::fs::read_dir(host)?.flatten() {
            let name = e.file_name();
            let n = name.to_string_lossy();
            if (n.ends_with(".target") || n.ends_with(".slice")) && !units.join(&name).exists() {
                let md = std::fs::symlink_metadata(e.path())?;
                if md.file_type().is_symlink() {
                    std::os::unix::fs::symlink(std::fs::read_link(e.path())?, units.join(&name))?;
                } else if md.is_file() {
                    std::fs::copy(e.path(), units.join(&name))?;
                }
            }
        }
    }
    Ok(units)
}

/// `systemd-analyze verify --root=ROOT UNITS...`: the tool's complaints (its standard error;
/// it exits 0 for a warning), or an error if it failed.
pub fn analyze_verify(tool: &Path, root: &Path, units: &[&str]) -> Result<String, String> {
    let out = Command::new(tool)
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "systemd-analyze verify failed ({}):\n{text}",
            out.status
        ))
    }
}

/// `systemd-analyze security --offline=yes --root=ROOT UNIT`: its table and the overall
/// exposure it reports (0.0 best, 10.0 worst).
pub fn analyze_security(tool: &Path, root: &Path, unit: &str) -> Result<(String, f64), String> {
    let out = Command::new(tool)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg(unit)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let exposure = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for "))
        .and_then(|(_, rest)| rest.split_once(": "))
        .and_then(|(_, v)| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| {
            format!(
                "no exposure level in the output ({}):\n{text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok((text, exposure))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "# comment\n[Unit]\nDescription=x %i\n\n[Service]\n\
        Environment=ARGS= OTHER=a\nExecStart=/usr/bin/d --dir=/srv/%i \\\n  --x $ARGS ${OTHER}b\n\
        CapabilityBoundingSet=CAP_CHOWN CAP_SYS_ADMIN\nCapabilityBoundingSet=CAP_SETUID\n\
        NoNewPrivileges=yes\nProtectSystem=strict\nReadWritePaths=/srv/%i\n";

    #[test]
    fn exec_start_is_expanded_like_systemd() {
        let u = Unit::parse(SERVICE);
        assert_eq!(u.value("Unit", "Description"), Some("x %i"));
        assert_eq!(
            exec_start(&u, "vm1", &[]),
            ["/usr/bin/d", "--dir=/srv/vm1", "--x", "ab"]
        );
        assert_eq!(
            exec_start(&u, "vm1", &[("ARGS", "--a=1  --b")]),
            ["/usr/bin/d", "--dir=/srv/vm1", "--x", "--a=1", "--b", "ab"]
        );
        assert_eq!(specifiers("100%% %i", "n"), "100% n");
    }

    #[test]
    fn hardening_is_read_from_the_service() {
        let h = Hardening::of(&Unit::parse(SERVICE), "vm1");
        assert_eq!(
            h.capabilities,
            Some(vec!["chown".into(), "sys_admin".into(), "setuid".into()])
        );
        assert!(h.no_new_privs && h.read_only_system);
        assert!(!h.private_network);
        assert_eq!(h.read_write_paths, ["/srv/vm1"]);
        let argv = h.confine(&[Path::new("/s")], vec!["/d".into()]);
        let tail: Vec<_> = argv[argv.len() - 6..].iter().collect();
        assert_eq!(
            tail,
            [
                "/s",
                "setpriv",
                "--bounding-set=-all,+chown,+sys_admin,+setuid",
                "--no-new-privs",
                "--",
                "/d"
            ]
        );
    }
}

/// What [`start_activated`] needs from the host: root and the tools.
#[derive(Clone, Debug)]
pub struct ActivationTools {
    /// `systemd-socket-activate`.
    pub socket_activate: PathBuf,
}

/// The tools to run a unit's command the way systemd would, or `None` after [`skip`]: root,
/// `systemd-socket-activate` (Debian package systemd), `setpriv` and `unshare` (util-linux).
pub fn activation_tools(test: &str) -> Option<ActivationTools> {
    if !require_root(test) {
        return None;
    }
    let tools = require_tools(
        test,
        &[
            ("systemd-socket-activate", "systemd"),
            ("setpriv", "util-linux"),
            ("unshare", "util-linux"),
            ("awk", "mawk"),
        ],
    )?;
    Some(ActivationTools {
        socket_activate: tools[0].clone(),
    })
}

/// A daemon started as `vfsdaxd@INSTANCE.socket` starts `vfsdaxd@INSTANCE.service`, connected.
pub struct Activated {
    /// The driver, initialised (INIT answered), and the daemon (`systemd-socket-activate`,
    /// which became the daemon).
    pub session: crate::harness::Session,
    /// The service's `$NOTIFY_SOCKET`, `READY=1` received.
    pub notify: NotifyListener,
    /// The command line run (for messages).
    pub command: Vec<OsString>,
}

/// Starts the service `service` (a unit file: `contrib/vfsdaxd@.service`, or the one a package
/// installed) for `instance` the way its socket unit does: its `ExecStart=` expanded with `env`
/// (what `/etc/vfsdaxd/INSTANCE.conf` would set), the installed program replaced by `binary`
/// and the share (`ReadWritePaths=`) by a fresh temporary directory, under the hardening
/// [`Hardening::confine`] reproduces, behind `systemd-socket-activate` with a
/// `$NOTIFY_SOCKET` listener. Then connects the driver (which activates the daemon), sends
/// INIT and waits for `READY=1`. Panics with the daemon's output when something fails.
pub fn start_activated(
    tools: &ActivationTools,
    service: &Path,
    binary: &Path,
    instance: &str,
    env: &[(&str, &str)],
) -> Activated {
    use crate::harness::{error_chain, Daemon, DaemonDirs, Session};
    let unit = Unit::load(service).unwrap_or_else(|e| panic!("{}: {e}", service.display()));
    let argv = exec_start(&unit, instance, env);
    let hardening = Hardening::of(&unit, instance);
    let [installed_share] = &hardening.read_write_paths[..] else {
        panic!(
            "one ReadWritePaths= (the share) expected in {}: {:?}",
            service.display(),
            hardening.read_write_paths
        );
    };
    assert!(
        argv.contains(&format!("--shared-dir={installed_share}")),
        "the service shares its ReadWritePaths= ({installed_share}): {argv:?}"
    );
    let dirs = DaemonDirs::new(None).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let installed_binary = argv[0].clone();
    let argv = rewrite(
        &argv,
        &[(&installed_binary, binary), (installed_share, &dirs.share)],
    );
    let command = hardening.confine(&[&dirs.share], argv);
    let notify = NotifyListener::bind(&dirs.tmp.path().join("notify"))
        .unwrap_or_else(|e| panic!("bind the notify socket: {e}"));
    let cmd = socket_activate(
        &tools.socket_activate,
        &dirs.socket,
        notify.path(),
        &command,
    );
    let daemon = Daemon::spawn(cmd, dirs).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let session = Session::attach(daemon, Default::default());
    let mut activated = Activated {
        session,
        notify,
        command,
    };
    if let Err(e) = activated
        .notify
        .wait_for("READY=1", Duration::from_secs(10))
    {
        panic!(
            "{e}\ncommand: {:?}\ndaemon output:\n{}",
            activated.command,
            activated.session.daemon.log_text()
        );
    }
    activated
}
