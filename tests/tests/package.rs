//! The Debian package (`scripts/package-deb.sh`), built from the workspace and installed into
//! scratch roots only (never into this system):
//! - the vhost-user backend descriptor `contrib/50-vfsdaxd.json` follows QEMU's schema
//!   (`docs/interop/vhost-user.json`, `VhostUserBackend`);
//! - the package's control fields and file list (paths, modes, owners) are the expected ones,
//!   and what it installs is what the repository holds;
//! - `dpkg --root` unpacks it into a scratch root (its own dpkg database);
//! - the installed `/usr/libexec/vfsdaxd` runs (`--version`, `--print-capabilities`), the
//!   installed units pass `systemd-analyze verify`, and the installed service, started the way
//!   its socket unit starts it (`vfsdax_tests::systemd`), serves a share to the host-side
//!   virtio-fs driver.
//!
//! The package is built from the debug build when the tests are (`VFSDAX_DEB_PROFILE=debug`:
//! a release build takes minutes here); the script itself defaults to release. Needs `dpkg-deb`
//! and `dpkg`; the serving part as in `tests/systemd.rs`. Without them the test prints why and
//! passes, except under `CI`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vfsdax_protocol::fuse::ROOT_ID;
use vfsdax_tests::bins::{build_dirs, workspace_root};
use vfsdax_tests::harness::{error_chain, TempDir};
use vfsdax_tests::systemd::{
    activation_tools, analyze_verify, contrib_dir, find_tool, populate_unit_root, require_tools,
    start_activated,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Checks a vhost-user backend descriptor against QEMU's `VhostUserBackend`: an object with
/// `description` (string), `type` (here `fs`), `binary` (an absolute path) and optionally
/// `tags` (strings), nothing else.
fn check_descriptor(text: &str) -> Value {
    let v: Value = serde_json::from_str(text).expect("the descriptor is JSON");
    let obj = v.as_object().expect("a JSON object");
    for key in obj.keys() {
        assert!(
            ["description", "type", "binary", "tags"].contains(&key.as_str()),
            "{key} is not a VhostUserBackend member"
        );
    }
    let description = obj["description"].as_str().expect("description: a string");
    assert!(!description.trim().is_empty());
    assert_eq!(obj["type"], "fs", "a virtio-fs backend");
    assert_eq!(obj["binary"], "/usr/libexec/vfsdaxd");
    if let Some(tags) = obj.get("tags") {
        assert!(tags
            .as_array()
            .expect("tags: an array")
            .iter()
            .all(Value::is_string));
    }
    v
}

#[test]
fn the_vhost_user_descriptor_follows_qemus_schema() {
    let text = std::fs::read_to_string(contrib_dir().join("50-vfsdaxd.json")).expect("read it");
    check_descriptor(&text);
}

/// Runs `cmd`, panicking with its output unless it succeeds; its standard output.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the package must hold, `path → mode string` as `dpkg-deb --contents` prints it.
fn expected_contents() -> BTreeMap<String, String> {
    const DIR: &str = "drwxr-xr-x";
    const FILE: &str = "-rw-r--r--";
    let mut m = BTreeMap::new();
    for d in [
        "usr",
        "usr/lib",
        "usr/lib/systemd",
        "usr/lib/systemd/system",
        "usr/libexec",
        "usr/share",
        "usr/share/doc",
        "usr/share/doc/vfsdaxd",
        "usr/share/doc/vfsdaxd/docs",
        "usr/share/qemu",
        "usr/share/qemu/vhost-user",
    ] {
        m.insert(d.to_string(), DIR.to_string());
    }
    m.insert("usr/libexec/vfsdaxd".into(), "-rwxr-xr-x".into());
    for (path, _) in sources() {
        if path != "usr/libexec/vfsdaxd" {
            m.insert(path, FILE.to_string());
        }
    }
    m
}

/// Each installed file that comes from the repository unchanged, with its source.
fn sources() -> Vec<(String, PathBuf)> {
    let root = workspace_root();
    let contrib = contrib_dir();
    let mut v = vec![
        (
            "usr/lib/systemd/system/vfsdaxd@.socket".to_string(),
            contrib.join("vfsdaxd@.socket"),
        ),
        (
            "usr/lib/systemd/system/vfsdaxd@.service".to_string(),
            contrib.join("vfsdaxd@.service"),
        ),
        (
            "usr/share/qemu/vhost-user/50-vfsdaxd.json".to_string(),
            contrib.join("50-vfsdaxd.json"),
        ),
        (
            "usr/share/doc/vfsdaxd/README.md".to_string(),
            root.join("README.md"),
        ),
        (
            "usr/share/doc/vfsdaxd/ARCHITECTURE.md".to_string(),
            root.join("ARCHITECTURE.md"),
        ),
        (
            "usr/share/doc/vfsdaxd/copyright".to_string(),
            contrib.join("copyright"),
        ),
    ];
    for e in std::fs::read_dir(root.join("docs"))
        .expect("list docs/")
        .flatten()
    {
        if e.path().is_file() {
            v.push((
                format!(
                    "usr/share/doc/vfsdaxd/docs/{}",
                    e.file_name().to_string_lossy()
                ),
                e.path(),
            ));
        }
    }
    v
}

/// Builds the package into `out` with the test's own profile and target directory; its path.
fn build_package(out: &Path) -> PathBuf {
    let (target_dir, profile_dir) = build_dirs().unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => "release",
        _ => "debug",
    };
    let mut cmd = Command::new(workspace_root().join("scripts/package-deb.sh"));
    cmd.arg("--out")
        .arg(out)
        .env("VFSDAX_DEB_PROFILE", profile)
        .env("CARGO_TARGET_DIR", &target_dir);
    let stdout = run(&mut cmd);
    let deb = PathBuf::from(stdout.trim());
    assert_eq!(deb.parent(), Some(out), "{stdout}");
    assert!(deb.is_file(), "{} missing", deb.display());
    deb
}

#[test]
fn the_debian_package_installs_and_serves() {
    let test = "the_debian_package_installs_and_serves";
    let Some(tools) = require_tools(test, &[("dpkg-deb", "dpkg"), ("dpkg", "dpkg")]) else {
        return;
    };
    let (dpkg_deb, dpkg) = (&tools[0], &tools[1]);
    let tmp = TempDir::new("vfsdax-package").expect("temp dir");
    let deb = build_package(tmp.path());
    let arch = run(Command::new(dpkg).arg("--print-architecture"));
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("vfsdaxd_{VERSION}_{}.deb", arch.trim())
    );

    // The control fields.
    let field = |name: &str| run(Command::new(dpkg_deb).arg("--field").arg(&deb).arg(name));
    assert_eq!(field("Package").trim(), "vfsdaxd");
    assert_eq!(field("Version").trim(), VERSION);
    assert_eq!(field("Architecture").trim(), arch.trim());
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    assert!(!field("Maintainer").trim().is_empty());
    assert!(field("Description").contains("virtio-fs"));

    // The file list: exactly the expected paths, modes and owners.
    let listing = run(Command::new(dpkg_deb).arg("--contents").arg(&deb));
    let mut got = BTreeMap::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 6, "{line}");
        assert_eq!(f[1], "root/root", "{line}");
        let path = f[5].trim_start_matches("./").trim_end_matches('/');
        if !path.is_empty() {
            got.insert(path.to_string(), f[0].to_string());
        }
    }
    assert_eq!(got, expected_contents(), "the package's files");

    // Extracted: what it installs is what the repository holds.
    let x = TempDir::new("vfsdax-package-x").expect("temp dir");
    run(Command::new(dpkg_deb).arg("-x").arg(&deb).arg(x.path()));
    for (path, source) in sources() {
        let installed =
            std::fs::read(x.path().join(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        let original = std::fs::read(&source).unwrap();
        assert!(
            installed == original,
            "{path} differs from {}",
            source.display()
        );
    }
    check_descriptor(
        &std::fs::read_to_string(x.path().join("usr/share/qemu/vhost-user/50-vfsdaxd.json"))
            .unwrap(),
    );

    // dpkg itself installs it into a scratch root with its own database (unpack: no
    // maintainer script runs).
    let root = TempDir::new("vfsdax-package-root").expect("temp dir");
    let r = root.path();
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/log",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        std::fs::write(r.join(f), b"").unwrap();
    }
    run(Command::new(dpkg)
        .arg(format!("--root={}", r.display()))
        .arg(format!("--log={}", r.join("var/log/dpkg.log").display()))
        .args(["--force-depends", "--unpack"])
        .arg(&deb));
    let status = run(Command::new(dpkg)
        .arg(format!("--root={}", r.display()))
        .args(["--status", "vfsdaxd"]));
    assert!(status.contains("Status: install ok unpacked"), "{status}");
    let listed = run(Command::new(dpkg)
        .arg(format!("--root={}", r.display()))
        .args(["--listfiles", "vfsdaxd"]));
    let mut listed: Vec<&str> = listed
        .lines()
        .map(|l| l.trim_start_matches('/'))
        .filter(|l| !l.is_empty() && *l != ".")
        .collect();
    listed.sort_unstable();
    let expected = expected_contents();
    assert_eq!(
        listed,
        expected.keys().map(String::as_str).collect::<Vec<_>>(),
        "dpkg --listfiles"
    );

    // The installed program.
    let binary = r.join("usr/libexec/vfsdaxd");
    let version = run(Command::new(&binary).arg("--version"));
    assert_eq!(version.trim(), format!("vfsdaxd {VERSION}"));
    let caps: Value = serde_json::from_str(&run(Command::new(&binary).arg("--print-capabilities")))
        .expect("--print-capabilities prints JSON");
    assert_eq!(caps["type"], "fs", "{caps}");
    assert!(caps["features"].is_array(), "{caps}");

    // The installed units: systemd-analyze verify on the installed tree, then the service
    // serving a share behind socket activation.
    let units = populate_unit_root(r).expect("host targets into the scratch root");
    match find_tool("systemd-analyze") {
        Some(analyze) => {
            let text = analyze_verify(&analyze, r, &["vfsdaxd@pkg.socket", "vfsdaxd@pkg.service"])
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(text.trim().is_empty(), "systemd-analyze verify:\n{text}");
        }
        None => vfsdax_tests::systemd::skip(
            test,
            "the verify step: systemd-analyze is not installed (Debian package systemd)",
        ),
    }
    let Some(tools) = activation_tools(test) else {
        return;
    };
    let mut a = start_activated(&tools, &units.join("vfsdaxd@.service"), &binary, "pkg", &[]);
    let s = &mut a.session;
    std::fs::write(s.host("from-the-package"), b"installed and serving\n").unwrap();
    let e = s
        .client
        .lookup(ROOT_ID, b"from-the-package")
        .expect("LOOKUP");
    let fh = s
        .client
        .open(e.nodeid, libc::O_RDONLY as u32)
        .expect("OPEN")
        .fh;
    assert_eq!(
        s.client.read(e.nodeid, fh, 0, 4096).expect("READ"),
        b"installed and serving\n"
    );
    s.assert_serving();
}
