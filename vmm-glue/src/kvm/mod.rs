//! The thin KVM layer of the DAX fault glue.
//!
//! - [`vcpu`]: the vCPU operations the glue needs, behind [`vcpu::VcpuOps`] so tests can stand
//!   in for KVM and count ioctls; [`vcpu::KvmVcpu`] is the real one.
//! - [`apf`]: the async-page-fault error protocol (CPUID bit, MSR trapping, tokens).
//! - [`fence`]: fencing lost window ranges so KVM's own async PF cannot loop on them.
//! - [`mce`]: machine-check injection.
//! - [`memslot`]: [`WindowMemslot`], the window as a KVM memslot that keeps it alive.
//! - [`watch`]: [`ShrinkWatcher`], which fences a file's lost ranges when it shrinks.
//! - [`handler`]: [`handler::DaxFaultHandler`], which turns a vCPU exit into a report and an
//!   injection; [`report`]: the reports it produces.

pub mod apf;
pub mod fence;
pub mod handler;
pub mod mce;
pub mod memslot;
pub mod report;
pub mod vcpu;
pub mod watch;

pub use handler::{DaxFaultHandler, FaultConfig, FaultCounters, FaultError, Handled, VmFaultState};
pub use memslot::{MemslotError, WindowMemslot};
pub use report::{PendingReport, StopDiagnostic};
pub use vcpu::{CpuSnapshot, Exit, KvmVcpu, VcpuOps};
pub use watch::{ShrinkWatcher, WatchError, WatchStats, WatchSync};
