//! The thin KVM layer of the DAX fault glue.
//!
//! - [`vcpu`]: the vCPU operations the glue needs, behind [`vcpu::VcpuOps`] so tests can stand
//!   in for KVM and count ioctls; [`vcpu::KvmVcpu`] is the real one.
//! - [`apf`]: the async-page-fault error protocol (CPUID bit, MSR trapping, tokens).
//! - [`mce`]: machine-check injection.
//! - [`handler`]: [`handler::DaxFaultHandler`], which turns a vCPU exit into a report and an
//!   injection.

pub mod apf;
pub mod handler;
pub mod mce;
pub mod vcpu;

pub use handler::{
    DaxFaultHandler, FaultConfig, FaultCounters, FaultError, Handled, StopDiagnostic,
};
pub use vcpu::{CpuSnapshot, Exit, KvmVcpu, VcpuOps};
