//! What to do about a classified fault: the decision tables, as pure functions.
//!
//! A truncated page goes to the guest as an async-page-fault error when the guest opted in and can
//! take it right now; otherwise to the window's fallback policy, degrading
//! `mce` → `zero-fill` when a machine check cannot be delivered safely.

use std::fmt;
use std::str::FromStr;

use vfsdax_protocol::apf::{
    KVM_ASYNC_PF_DELIVERY_AS_INT, KVM_ASYNC_PF_ENABLED, KVM_ASYNC_PF_SEND_ALWAYS,
    KVM_ASYNC_PF_SEND_ERROR,
};

use super::classify::Classification;

/// What to do with a truncated page when the apf error path is not available. Per window.
///
/// The default is [`FallbackPolicy::Mce`]: it is what the host kernel does to a process touching
/// hardware-poisoned memory, so an unmodified Linux guest kills only the task that touched the
/// page (SIGBUS), and no data is invented.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FallbackPolicy {
    /// Inject a machine check (SRAR) at the faulting GPA; needs guest CR4.MCE, else `ZeroFill`.
    #[default]
    Mce,
    /// Map zero pages over the lost range; the guest reads zeros, as from a hole.
    ZeroFill,
    /// Stop the VM with a diagnostic naming the file, offset, size now and GPA.
    Stop,
}

impl FromStr for FallbackPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mce" => Ok(Self::Mce),
            "zero-fill" => Ok(Self::ZeroFill),
            "stop" => Ok(Self::Stop),
            other => Err(format!(
                "unknown fault policy '{other}' (expected mce, zero-fill or stop)"
            )),
        }
    }
}

impl fmt::Display for FallbackPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mce => "mce",
            Self::ZeroFill => "zero-fill",
            Self::Stop => "stop",
        })
    }
}

/// The guest's apf registration for one vCPU, as trapped from its MSR writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApfRegistration {
    /// Last value the guest wrote to `MSR_KVM_ASYNC_PF_EN` (with `SEND_ERROR` as written).
    pub msr_en: u64,
    /// Vector the guest wrote to `MSR_KVM_ASYNC_PF_INT`, if any.
    pub vector: Option<u8>,
}

impl ApfRegistration {
    /// Whether the guest enabled apf at all.
    pub fn enabled(&self) -> bool {
        self.msr_en & KVM_ASYNC_PF_ENABLED != 0
    }
    /// Whether the guest asked for error reports (`SEND_ERROR`).
    pub fn send_error(&self) -> bool {
        self.msr_en & KVM_ASYNC_PF_SEND_ERROR != 0
    }
    /// Whether the guest accepts reports in kernel mode (`SEND_ALWAYS`).
    pub fn send_always(&self) -> bool {
        self.msr_en & KVM_ASYNC_PF_SEND_ALWAYS != 0
    }
    /// The 'page ready' vector, if delivery as interrupt is enabled with a usable vector.
    pub fn ready_vector(&self) -> Option<u8> {
        if self.msr_en & KVM_ASYNC_PF_DELIVERY_AS_INT == 0 {
            return None;
        }
        self.vector.filter(|v| *v >= 32)
    }
    /// Guest-physical address of the apf data.
    pub fn data_gpa(&self) -> u64 {
        self.msr_en & vfsdax_protocol::apf::KVM_ASYNC_PF_ADDR_MASK
    }
}

/// The guest CPU state the decision depends on, taken at the faulting exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestCpuState {
    /// Current privilege level (0 = kernel, 3 = user).
    pub cpl: u8,
    /// RFLAGS.IF: the guest can take the 'page ready' interrupt while it waits.
    pub interrupts_enabled: bool,
    /// CR4.MCE: a machine check is delivered instead of shutting the VM down.
    pub cr4_mce: bool,
    /// MCG_STATUS.MCIP is (or may still be) set: a second #MC would shut the VM down.
    pub mce_in_progress: bool,
}

/// Why the apf error path was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApfRefusal {
    /// The VMM does not advertise `ASYNC_PF_ERROR`.
    NotAdvertised,
    /// The guest did not enable apf with `SEND_ERROR`.
    NotOptedIn,
    /// The guest did not enable 'page ready' interrupts with a valid vector.
    NoReadyVector,
    /// Kernel-mode access and the guest did not set `SEND_ALWAYS`.
    KernelModeWithoutSendAlways,
    /// Interrupts are disabled, so the guest could not wait for 'page ready'.
    InterruptsDisabled,
}

impl fmt::Display for ApfRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAdvertised => "apf error feature not advertised",
            Self::NotOptedIn => "guest did not opt in to apf errors",
            Self::NoReadyVector => "guest has no 'page ready' interrupt vector",
            Self::KernelModeWithoutSendAlways => "kernel-mode access without SEND_ALWAYS",
            Self::InterruptsDisabled => "guest interrupts disabled at the access",
        })
    }
}

/// Why a machine check was not injected under the `mce` policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MceRefusal {
    /// Guest CR4.MCE is clear: a #MC would shut the VM down.
    Cr4MceClear,
    /// A previous machine check is still in progress (MCIP): a second would shut the VM down.
    InProgress,
}

impl fmt::Display for MceRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cr4MceClear => "guest CR4.MCE is clear",
            Self::InProgress => "a machine check is still in progress",
        })
    }
}

/// The action chosen for one exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Report through the async-page-fault page.
    ApfError,
    /// Inject a machine check.
    MachineCheck,
    /// Map zero pages over the lost range.
    ZeroFill,
    /// Stop the VM with a diagnostic.
    Stop,
    /// Complete the MMIO access like unclaimed MMIO (guest bug inside the window).
    UnclaimedMmio,
    /// The page is backed again: re-execute the access.
    Retry,
    /// Not ours: the VMM handles the exit.
    PassThrough,
}

/// A decision with the reasons for any fallback taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The action.
    pub decision: Decision,
    /// Why the apf path was not taken (for a truncated page).
    pub apf_refused: Option<ApfRefusal>,
    /// Why the `mce` policy degraded to zero-fill.
    pub mce_refused: Option<MceRefusal>,
}

impl Verdict {
    fn plain(decision: Decision) -> Self {
        Verdict {
            decision,
            apf_refused: None,
            mce_refused: None,
        }
    }

    /// A one-line reason for the fallback, for the fault report.
    pub fn fallback_reason(&self) -> Option<String> {
        match (self.apf_refused, self.mce_refused) {
            (None, None) => None,
            (Some(a), None) => Some(a.to_string()),
            (None, Some(m)) => Some(m.to_string()),
            (Some(a), Some(m)) => Some(format!("{a}; {m}")),
        }
    }
}

/// Whether the apf error path can carry this fault, or why not.
pub fn apf_refusal(
    advertised: bool,
    apf: &ApfRegistration,
    cpu: &GuestCpuState,
) -> Option<ApfRefusal> {
    if !advertised {
        Some(ApfRefusal::NotAdvertised)
    } else if !apf.enabled() || !apf.send_error() {
        Some(ApfRefusal::NotOptedIn)
    } else if apf.ready_vector().is_none() {
        Some(ApfRefusal::NoReadyVector)
    } else if cpu.cpl == 0 && !apf.send_always() {
        Some(ApfRefusal::KernelModeWithoutSendAlways)
    } else if !cpu.interrupts_enabled {
        Some(ApfRefusal::InterruptsDisabled)
    } else {
        None
    }
}

/// Decides what to do about `class`. `from_mmio` says whether the exit was an MMIO access (which
/// can be completed in place) rather than a failed `KVM_RUN` or a SIGBUS.
pub fn decide(
    class: &Classification,
    from_mmio: bool,
    advertised: bool,
    apf: &ApfRegistration,
    cpu: &GuestCpuState,
    policy: FallbackPolicy,
) -> Verdict {
    match class {
        Classification::NotDax => Verdict::plain(Decision::PassThrough),
        Classification::Backed { .. } => Verdict::plain(Decision::Retry),
        Classification::UnmappedWindowAccess { .. } | Classification::ReadOnlyWrite { .. } => {
            // Nothing can be mapped there on the guest's behalf. An MMIO exit is completed the way
            // unclaimed physical addresses behave; a failed KVM_RUN would fail again, so the
            // faulting task gets the apf error or a machine check if it can, else the VM stops.
            if from_mmio {
                return Verdict::plain(Decision::UnclaimedMmio);
            }
            let apf_refused = apf_refusal(advertised, apf, cpu);
            if apf_refused.is_none() {
                return Verdict::plain(Decision::ApfError);
            }
            let mce_refused = if !cpu.cr4_mce {
                Some(MceRefusal::Cr4MceClear)
            } else if cpu.mce_in_progress {
                Some(MceRefusal::InProgress)
            } else {
                None
            };
            let decision = match (policy, mce_refused) {
                (FallbackPolicy::Stop, _) | (_, Some(_)) => Decision::Stop,
                _ => Decision::MachineCheck,
            };
            Verdict {
                decision,
                apf_refused,
                mce_refused,
            }
        }
        Classification::TruncatedPage(t) => {
            let apf_refused = apf_refusal(advertised, apf, cpu);
            if apf_refused.is_none() {
                // The apf error goes to the task that faulted, whichever page it was.
                return Verdict::plain(Decision::ApfError);
            }
            if t.located.is_ambiguous() {
                // A machine check or zero pages need the page: the glue does not guess it.
                return Verdict {
                    decision: Decision::Stop,
                    apf_refused,
                    mce_refused: None,
                };
            }
            let (decision, mce_refused) = match policy {
                FallbackPolicy::Mce if !cpu.cr4_mce => {
                    (Decision::ZeroFill, Some(MceRefusal::Cr4MceClear))
                }
                FallbackPolicy::Mce if cpu.mce_in_progress => {
                    (Decision::ZeroFill, Some(MceRefusal::InProgress))
                }
                FallbackPolicy::Mce => (Decision::MachineCheck, None),
                FallbackPolicy::ZeroFill => (Decision::ZeroFill, None),
                FallbackPolicy::Stop => (Decision::Stop, None),
            };
            Verdict {
                decision,
                apf_refused,
                mce_refused,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dax::{FileIdentity, Mapping};
    use crate::fault::classify::{Located, TruncatedPage};
    use std::fs::File;
    use std::sync::Arc;
    use vfsdax_protocol::report::Access;

    fn truncated() -> Classification {
        Classification::TruncatedPage(TruncatedPage {
            mapping: Mapping {
                window_offset: 0,
                len: 0x4000,
                file_offset: 0,
                file: Arc::new(File::open("/dev/null").expect("/dev/null")),
                identity: FileIdentity { dev: 1, ino: 2 },
                writable: true,
                map_id: 1,
                size_seen: Arc::new(std::sync::atomic::AtomicU64::new(0x4000)),
            },
            gpa: 0x4000_2000,
            window_offset: 0x2000,
            file_offset: 0x2000,
            file_size: Some(0),
            access: Access::Read,
            located: Located::Exact,
        })
    }

    const OPTED_IN: ApfRegistration = ApfRegistration {
        msr_en: 0x9000
            | KVM_ASYNC_PF_ENABLED
            | KVM_ASYNC_PF_DELIVERY_AS_INT
            | KVM_ASYNC_PF_SEND_ERROR,
        vector: Some(0xf3),
    };
    const USER_IF: GuestCpuState = GuestCpuState {
        cpl: 3,
        interrupts_enabled: true,
        cr4_mce: true,
        mce_in_progress: false,
    };

    fn d(apf: ApfRegistration, cpu: GuestCpuState, policy: FallbackPolicy) -> Verdict {
        decide(&truncated(), true, true, &apf, &cpu, policy)
    }

    #[test]
    fn opted_in_user_access_takes_the_apf_path_whatever_the_policy() {
        for p in [
            FallbackPolicy::Mce,
            FallbackPolicy::ZeroFill,
            FallbackPolicy::Stop,
        ] {
            assert_eq!(d(OPTED_IN, USER_IF, p), Verdict::plain(Decision::ApfError));
        }
        assert_eq!(OPTED_IN.data_gpa(), 0x9000);
    }

    #[test]
    fn apf_refusals_in_table_order() {
        let kernel = GuestCpuState { cpl: 0, ..USER_IF };
        let no_if = GuestCpuState {
            interrupts_enabled: false,
            ..USER_IF
        };
        let no_err = ApfRegistration {
            msr_en: OPTED_IN.msr_en & !KVM_ASYNC_PF_SEND_ERROR,
            ..OPTED_IN
        };
        let disabled = ApfRegistration {
            msr_en: OPTED_IN.msr_en & !KVM_ASYNC_PF_ENABLED,
            ..OPTED_IN
        };
        let no_int = ApfRegistration {
            msr_en: OPTED_IN.msr_en & !KVM_ASYNC_PF_DELIVERY_AS_INT,
            ..OPTED_IN
        };
        let bad_vec = ApfRegistration {
            vector: Some(14),
            ..OPTED_IN
        };
        let always = ApfRegistration {
            msr_en: OPTED_IN.msr_en | KVM_ASYNC_PF_SEND_ALWAYS,
            ..OPTED_IN
        };
        let table: [(bool, ApfRegistration, GuestCpuState, Option<ApfRefusal>); 9] = [
            (false, OPTED_IN, USER_IF, Some(ApfRefusal::NotAdvertised)),
            (
                true,
                ApfRegistration::default(),
                USER_IF,
                Some(ApfRefusal::NotOptedIn),
            ),
            (true, no_err, USER_IF, Some(ApfRefusal::NotOptedIn)),
            (true, disabled, USER_IF, Some(ApfRefusal::NotOptedIn)),
            (true, no_int, USER_IF, Some(ApfRefusal::NoReadyVector)),
            (true, bad_vec, USER_IF, Some(ApfRefusal::NoReadyVector)),
            (
                true,
                OPTED_IN,
                kernel,
                Some(ApfRefusal::KernelModeWithoutSendAlways),
            ),
            (true, always, kernel, None),
            (true, OPTED_IN, no_if, Some(ApfRefusal::InterruptsDisabled)),
        ];
        for (i, (adv, apf, cpu, want)) in table.into_iter().enumerate() {
            assert_eq!(apf_refusal(adv, &apf, &cpu), want, "row {i}");
        }
    }

    #[test]
    fn fallback_policy_table() {
        let none = ApfRegistration::default();
        let no_mce = GuestCpuState {
            cr4_mce: false,
            ..USER_IF
        };
        let mcip = GuestCpuState {
            mce_in_progress: true,
            ..USER_IF
        };
        let v = d(none, USER_IF, FallbackPolicy::Mce);
        assert_eq!(v.decision, Decision::MachineCheck);
        assert_eq!(v.apf_refused, Some(ApfRefusal::NotOptedIn));
        assert_eq!(
            v.fallback_reason().as_deref(),
            Some("guest did not opt in to apf errors")
        );
        let v = d(none, no_mce, FallbackPolicy::Mce);
        assert_eq!(
            (v.decision, v.mce_refused),
            (Decision::ZeroFill, Some(MceRefusal::Cr4MceClear))
        );
        let v = d(none, mcip, FallbackPolicy::Mce);
        assert_eq!(
            (v.decision, v.mce_refused),
            (Decision::ZeroFill, Some(MceRefusal::InProgress))
        );
        assert_eq!(
            d(none, no_mce, FallbackPolicy::ZeroFill).decision,
            Decision::ZeroFill
        );
        assert_eq!(
            d(none, USER_IF, FallbackPolicy::Stop).decision,
            Decision::Stop
        );
        assert_eq!(
            d(none, no_mce, FallbackPolicy::Stop).decision,
            Decision::Stop
        );
    }

    #[test]
    fn non_truncation_classes() {
        let any = |c: &Classification, mmio| {
            decide(c, mmio, true, &OPTED_IN, &USER_IF, FallbackPolicy::Mce).decision
        };
        assert_eq!(any(&Classification::NotDax, true), Decision::PassThrough);
        let unmapped = Classification::UnmappedWindowAccess {
            gpa: 1,
            window_offset: 1,
            access: Access::Read,
        };
        assert_eq!(any(&unmapped, true), Decision::UnclaimedMmio);
        assert_eq!(
            any(&unmapped, false),
            Decision::ApfError,
            "a failed run cannot be completed"
        );
        let none = ApfRegistration::default();
        let no_mce = GuestCpuState {
            cr4_mce: false,
            ..USER_IF
        };
        let d = |cpu: &GuestCpuState, p| decide(&unmapped, false, true, &none, cpu, p).decision;
        assert_eq!(d(&USER_IF, FallbackPolicy::Mce), Decision::MachineCheck);
        assert_eq!(
            d(&USER_IF, FallbackPolicy::ZeroFill),
            Decision::MachineCheck
        );
        assert_eq!(d(&no_mce, FallbackPolicy::Mce), Decision::Stop);
        assert_eq!(d(&USER_IF, FallbackPolicy::Stop), Decision::Stop);
        let Classification::TruncatedPage(t) = truncated() else {
            unreachable!()
        };
        let backed = Classification::Backed {
            mapping: t.mapping,
            gpa: 1,
            access: Access::Read,
        };
        assert_eq!(any(&backed, true), Decision::Retry);
    }

    #[test]
    fn policy_names_round_trip() {
        for p in [
            FallbackPolicy::Mce,
            FallbackPolicy::ZeroFill,
            FallbackPolicy::Stop,
        ] {
            assert_eq!(p.to_string().parse::<FallbackPolicy>(), Ok(p));
        }
        assert!("bogus".parse::<FallbackPolicy>().is_err());
        assert_eq!(FallbackPolicy::default(), FallbackPolicy::Mce);
    }

    #[test]
    fn an_ambiguous_fault_gets_the_apf_error_or_stops() {
        let Classification::TruncatedPage(mut t) = truncated() else {
            unreachable!()
        };
        t.located = Located::ByFileSize { candidates: 2 };
        let class = Classification::TruncatedPage(t);
        let cpu = GuestCpuState {
            cpl: 3,
            interrupts_enabled: true,
            cr4_mce: true,
            mce_in_progress: false,
        };
        let none = ApfRegistration::default();
        for policy in [
            FallbackPolicy::Mce,
            FallbackPolicy::ZeroFill,
            FallbackPolicy::Stop,
        ] {
            let v = decide(&class, false, true, &none, &cpu, policy);
            assert_eq!(v.decision, Decision::Stop, "{policy:?}: no page to act on");
        }
    }
}
