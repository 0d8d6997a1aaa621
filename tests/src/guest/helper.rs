//! Compiling small C helper programs for the guest: statically linked, since the initramfs has
//! no C library (pack them with `RunOptions::extra_files`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::elf::{self, ElfError};
use super::process;

/// Errors building a helper.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// No C compiler.
    #[error("no `cc` on PATH (install gcc and libc6-dev)")]
    NoCompiler,
    /// The compiler could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The compiler.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The compiler failed.
    #[error("`cc -static` failed ({status}) on {src}:\n{output}")]
    Compile {
        /// The C source.
        src: PathBuf,
        /// The compiler's exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        output: String,
    },
    /// The compiled program could not be read back.
    #[error("cannot read {path}")]
    Read {
        /// The program.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The compiled program is not a usable ELF file.
    #[error("cannot inspect {path}")]
    Elf {
        /// The program.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ElfError,
    },
    /// The compiled program is dynamically linked (it would not run in the guest).
    #[error("{0} is not statically linked")]
    NotStatic(PathBuf),
}

/// The C compiler: `cc` on `PATH`.
pub fn find_cc() -> Option<PathBuf> {
    process::find_in_path("cc")
}

/// Compiles the C file `src` into the statically linked x86_64 executable `out`
/// (`cc -static -O2 -Wall -Werror -o out src`), and checks that it is static.
pub fn build_static_helper(src: &Path, out: &Path) -> Result<(), HelperError> {
    let cc = find_cc().ok_or(HelperError::NoCompiler)?;
    let output = Command::new(&cc)
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(out)
        .arg(src)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HelperError::Spawn {
            program: cc.clone(),
            source,
        })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(HelperError::Compile {
            src: src.to_owned(),
            status: output.status,
            output: text.trim_end().to_owned(),
        });
    }
    let data = fs::read(out).map_err(|source| HelperError::Read {
        path: out.to_owned(),
        source,
    })?;
    match elf::is_static(&data) {
        Ok(true) => Ok(()),
        Ok(false) => Err(HelperError::NotStatic(out.to_owned())),
        Err(source) => Err(HelperError::Elf {
            path: out.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::scratch::ScratchDir;

    /// Whether `cc` is there; without it the test is skipped, visibly, except under CI.
    fn have_cc() -> bool {
        if find_cc().is_some() {
            return true;
        }
        if std::env::var_os("CI").is_some() {
            panic!("CI is set, so this test may not be skipped: no `cc` on PATH");
        }
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED: no `cc` on PATH");
        false
    }

    #[test]
    fn builds_a_static_program_that_runs() {
        if !have_cc() {
            return;
        }
        let dir = ScratchDir::new("helper-test").unwrap();
        let src = dir.path().join("hello.c");
        fs::write(
            &src,
            "#include <stdio.h>\nint main(int argc, char **argv) {\n    \
             printf(\"hello from %d args\\n\", argc);\n    return 0;\n}\n",
        )
        .unwrap();
        let out = dir.path().join("hello");
        build_static_helper(&src, &out).unwrap();
        assert!(process::is_executable(&out));
        assert_eq!(elf::is_static(&fs::read(&out).unwrap()), Ok(true));
        let run = Command::new(&out).arg("x").output().unwrap();
        assert!(run.status.success());
        assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from 2 args\n");
    }

    #[test]
    fn warnings_are_errors_with_the_compiler_output() {
        if !have_cc() {
            return;
        }
        let dir = ScratchDir::new("helper-bad").unwrap();
        let src = dir.path().join("bad.c");
        fs::write(
            &src,
            "int main(void) {\n    int unused_thing;\n    return 0;\n}\n",
        )
        .unwrap();
        let err = build_static_helper(&src, &dir.path().join("bad")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HelperError::Compile { .. }), "{msg}");
        assert!(msg.contains("unused_thing"), "{msg}");
    }
}
