//! guest-demo: serve a directory with `vfsdaxd` to a QEMU guest (Debian kernel, busybox) that
//! mounts it with `mount -t virtiofs`, lists and reads it; prints what the guest printed.
//! Run through `scripts/demo-qemu.sh`, which installs and builds what it needs first.

use std::path::PathBuf;
use std::process::ExitCode;

use vfsdax_tests::guest::scratch::ScratchDir;
use vfsdax_tests::guest::serial::demo_output;
use vfsdax_tests::guest::tool;
use vfsdax_tests::guest::{run_guest, Mode, RunOptions};
use vfsdax_tests::harness::error_chain;

const USAGE: &str = "usage: guest-demo [--share DIR] [--daemon PATH]
  --share DIR    directory to serve (default: a demo share made in a temporary directory)
  --daemon PATH  vhost-user-fs daemon to run (default: vfsdaxd next to this program)";

struct Args {
    share: Option<PathBuf>,
    daemon: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        share: None,
        daemon: None,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .map(PathBuf::from)
                .ok_or(format!("{name} needs a value"))
        };
        match arg.to_str() {
            Some("--share") => args.share = Some(value("--share")?),
            Some("--daemon") => args.daemon = Some(value("--daemon")?),
            Some("-h" | "--help") => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(args)
}

fn make_demo_share(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("docs"))?;
    std::fs::write(
        dir.join("hello.txt"),
        "Hello from the host! This file is served by vfsdaxd over vhost-user virtio-fs.\n",
    )?;
    std::fs::write(
        dir.join("docs/about.txt"),
        "vfsdax: a virtio-fs daemon with DAX windows, and a VMM library for clean DAX errors.\n",
    )?;
    let numbers: String = (1..=10)
        .map(|i| format!("{i} squared is {}\n", i * i))
        .collect();
    std::fs::write(dir.join("docs/numbers.txt"), numbers)?;
    std::os::unix::fs::symlink("hello.txt", dir.join("link-to-hello"))?;
    Ok(())
}

fn run() -> Result<(), String> {
    let Some((args, setup)) = tool::start(parse_args(), USAGE)? else {
        println!("{USAGE}");
        return Ok(());
    };
    let program = tool::daemon_or_vfsdaxd(args.daemon)?;
    let work =
        ScratchDir::new("demo").map_err(|e| format!("cannot make a scratch directory: {e}"))?;
    let share = match args.share {
        Some(s) => s,
        None => {
            let s = work.path().join("share");
            make_demo_share(&s).map_err(|e| format!("cannot make the demo share: {e}"))?;
            s
        }
    };
    println!(
        "guest-demo: serving {} with {} to a QEMU guest (kernel {}, TCG; takes a few seconds)",
        share.display(),
        program.display(),
        setup.kernel.release
    );
    let run = run_guest(
        &setup,
        &program,
        &share,
        &RunOptions::new(Mode::Demo),
        work.path(),
    )
    .map_err(|e| error_chain(&e))?;
    match demo_output(&run.qemu.serial) {
        Some(out) if run.report.exit_code == Some(0) => {
            println!("--- what the guest printed ---");
            print!("{out}");
            println!(
                "--- guest run took {:.1} s ---",
                run.qemu.elapsed.as_secs_f64()
            );
            Ok(())
        }
        _ => {
            let kept = work.keep();
            Err(format!(
                "the guest did not list and read the share (logs kept in {})\n{}",
                kept.display(),
                run.diagnostics()
            ))
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
