//! guest-repro: the truncation repro on a stock QEMU >= 11.1 (tests/src/guest/repro.rs). A
//! real guest task maps an 8 MiB DAX file and reads it, a host process truncates the file to
//! 0, the task reads the same page again. Prints one line a script can check, e.g.
//! `repro-truncate-qemu: vm=killed qemu=SIGBUS(exit-135) task=none share=unknown`, and exits 0
//! whatever the VM's fate (a failure to run the repro at all exits 1).
//! Run through `scripts/repro-truncate-qemu.sh`, which installs and builds what it needs first.

use std::path::PathBuf;
use std::process::ExitCode;

use vfsdax_tests::guest::daemon;
use vfsdax_tests::guest::repro::run_repro;
use vfsdax_tests::guest::scratch::ScratchDir;
use vfsdax_tests::guest::GuestSetup;
use vfsdax_tests::harness::error_chain;

const USAGE: &str = "usage: guest-repro [--daemon PATH] [--verbose] [-- DAEMON-ARGS...]
  --daemon PATH  vhost-user-fs daemon to run (default: vfsdaxd next to this program)
  --verbose      print the guest's, QEMU's and the daemon's logs after the line
  DAEMON-ARGS    more arguments for the daemon (it always gets --cache-size 256M --tag ...)";

struct Args {
    daemon: Option<PathBuf>,
    verbose: bool,
    daemon_args: Vec<String>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        daemon: None,
        verbose: false,
        daemon_args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--daemon" => {
                args.daemon = Some(it.next().ok_or("--daemon needs a value")?.into());
            }
            "--verbose" => args.verbose = true,
            "-h" | "--help" => return Ok(None),
            "--" => {
                args.daemon_args = it.collect();
                break;
            }
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    Ok(Some(args))
}

fn run() -> Result<(), String> {
    let Some(args) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    let setup = GuestSetup::detect_dax().map_err(|e| error_chain(&e))?;
    let program = match args.daemon {
        Some(p) => p,
        None => daemon::vfsdaxd_path().map_err(|e| error_chain(&e))?,
    };
    let work = ScratchDir::new("repro").map_err(|e| format!("cannot make a scratch dir: {e}"))?;
    let repro =
        run_repro(&setup, &program, &args.daemon_args, &work).map_err(|e| error_chain(&e))?;
    println!("repro-truncate-qemu: {}", repro.outcome.line());
    if args.verbose {
        println!("{}", repro.run.diagnostics());
    }
    if let Err(e) = &repro.truncate {
        return Err(format!("the host truncation did not happen: {e}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest-repro: {e}");
            ExitCode::FAILURE
        }
    }
}
