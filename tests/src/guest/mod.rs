//! Real-Linux-guest testing: boot a Debian cloud kernel under `qemu-system-x86_64 -accel tcg`
//! with a busybox initramfs, attach a vhost-user-fs daemon, mount the share with
//! `mount -t virtiofs` and run a POSIX workload, then check the share from the host.
//!
//! The pieces: [`kernel`] finds the kernel that `scripts/deps.sh` extracts and orders its
//! modules ([`modinfo`], [`elf`]); [`initramfs`] packs busybox, the modules and the scripts of
//! `tests/guest/` with the [`cpio`] writer; [`daemon`] starts and stops the daemon; [`qemu`]
//! runs the VM with a hard timeout; [`serial`] parses the guest's marker lines; [`workload`]
//! holds the expected steps and the host-side checks; [`run`] ties them together; [`tool`]
//! starts the `guest-*` programs; [`helper`] compiles static C programs for the guest.
//!
//! Two QEMUs: the host's (Debian 12, QEMU 7.2) with `vhost-user-fs-pci`, which gives the guest
//! no DAX window, and QEMU >= 11.1 from Debian sid (`scripts/deps.sh` installs it in
//! `target/qemu-sid/`) with the generic vhost-user device, which does
//! ([`GuestSetup::detect_dax`], [`FsDevice::Generic`]).

pub mod cpio;
pub mod daemon;
pub mod elf;
pub mod helper;
pub mod initramfs;
pub mod kernel;
pub mod md5;
pub mod modinfo;
pub mod process;
pub mod qemu;
pub mod repro;
pub mod run;
pub mod scratch;
pub mod serial;
pub mod tool;
pub mod workload;

pub use qemu::FsDevice;
pub use run::{run_guest, GuestError, GuestRun, GuestSetup, Mode, RunOptions};
