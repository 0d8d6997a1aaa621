//! The async-page-fault error protocol, host half, from userspace: VM set-up (CPUID bit, MSR
//! filter, user-space MSR exits) and the per-vCPU state (the guest's registration, tokens, the
//! 'page ready' queue).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_enable_cap, CpuId, KVM_CAP_EXCEPTION_PAYLOAD, KVM_CAP_X86_USER_SPACE_MSR,
    KVM_MSR_EXIT_REASON_FILTER,
};
use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
use vfsdax_protocol::apf::{
    self, KVM_ASYNC_PF_RESERVED, KVM_ASYNC_PF_SEND_ERROR, KVM_CPUID_FEATURES, KVM_FEATURE_ASYNC_PF,
    KVM_FEATURE_ASYNC_PF_INT, MSR_KVM_ASYNC_PF_ACK, MSR_KVM_ASYNC_PF_EN, MSR_KVM_ASYNC_PF_INT,
    MSR_KVM_PV_BASE,
};
use vmm_sys_util::errno;

use crate::fault::ApfRegistration;

use super::vcpu::VcpuOps;

/// Errors of the apf set-up.
#[derive(Debug, thiserror::Error)]
pub enum ApfError {
    /// The configured CPUID bit collides with an upstream KVM feature bit.
    #[error("CPUID 0x40000001 bit {0} is assigned upstream and cannot carry ASYNC_PF_ERROR")]
    FeatureBitTaken(u32),
    /// The CPUID table has no KVM features leaf.
    #[error("the CPUID table has no KVM features leaf (0x40000001)")]
    NoKvmLeaf,
    /// Enabling a capability or installing the MSR filter failed.
    #[error("cannot set up apf MSR trapping ({what})")]
    Setup {
        /// Which step failed.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: errno::Error,
    },
}

/// Advertises `ASYNC_PF_ERROR` (and makes sure `ASYNC_PF` and `ASYNC_PF_INT` are advertised) in
/// the KVM features leaf of `cpuid`, at `bit`.
pub fn advertise_feature(cpuid: &mut CpuId, bit: u32) -> Result<(), ApfError> {
    if !apf::is_free_feature_bit(bit) {
        return Err(ApfError::FeatureBitTaken(bit));
    }
    let leaf = cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == KVM_CPUID_FEATURES)
        .ok_or(ApfError::NoKvmLeaf)?;
    leaf.eax |= (1 << bit) | (1 << KVM_FEATURE_ASYNC_PF) | (1 << KVM_FEATURE_ASYNC_PF_INT);
    Ok(())
}

/// Enables `KVM_CAP_EXCEPTION_PAYLOAD` (for #PF with CR2 as payload) and traps guest writes to
/// `MSR_KVM_ASYNC_PF_EN`, `_INT` and `_ACK` to userspace (`KVM_CAP_X86_USER_SPACE_MSR` with an
/// MSR filter that denies exactly those writes; every other MSR stays in the kernel).
pub fn setup_vm(vm: &VmFd) -> Result<(), ApfError> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_EXCEPTION_PAYLOAD,
        ..Default::default()
    };
    cap.args[0] = 1;
    vm.enable_cap(&cap).map_err(|source| ApfError::Setup {
        what: "exception payload",
        source,
    })?;
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_FILTER);
    vm.enable_cap(&cap).map_err(|source| ApfError::Setup {
        what: "user-space MSR",
        source,
    })?;
    let bitmap = [filter_bitmap()];
    let range = MsrFilterRange {
        flags: MsrFilterRangeFlags::WRITE,
        base: MSR_KVM_PV_BASE,
        msr_count: 8,
        bitmap: &bitmap,
    };
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range])
        .map_err(|source| ApfError::Setup {
            what: "MSR filter",
            source,
        })
}

/// The write bitmap for MSRs `0x4b564d00..0x4b564d08`: a cleared bit denies (traps) the write.
pub fn filter_bitmap() -> u8 {
    let mut b = 0xffu8;
    for msr in [
        MSR_KVM_ASYNC_PF_EN,
        MSR_KVM_ASYNC_PF_INT,
        MSR_KVM_ASYNC_PF_ACK,
    ] {
        b &= !(1 << (msr - MSR_KVM_PV_BASE));
    }
    b
}

/// Result of a trapped apf MSR write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrWrite {
    /// Whether the guest gets #GP.
    pub gp: bool,
    /// Whether KVM accepted the forwarded value (its own async PF keeps working).
    pub forwarded: bool,
}

/// The sequence of vfsdax tokens of one VM. A guest may wake a sleeper by its token from any
/// vCPU (Linux keeps one sleeper table for all of them), so every vCPU of a VM must draw its
/// tokens from the same sequence.
#[derive(Debug, Default)]
pub struct TokenSequence(AtomicU32);

impl TokenSequence {
    /// The next token of the vfsdax token space.
    pub fn next_token(&self) -> u32 {
        let step = |s: u32| Some((s + 1) % apf::VFSDAX_TOKEN_SEQUENCES);
        // The closure never returns None, so both arms carry the previous value.
        let seq = match self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, step)
        {
            Ok(s) | Err(s) => s,
        };
        apf::vfsdax_token(seq)
    }
}

/// Per-vCPU apf state.
#[derive(Debug, Default)]
pub struct ApfVcpu {
    /// The guest's registration.
    pub registration: ApfRegistration,
    /// Tokens whose 'page ready' (with `PAGE_ERROR`) waits for a free slot.
    pub pending_ready: VecDeque<u32>,
    /// Where this vCPU's tokens come from (shared by the vCPUs of a VM).
    pub tokens: Arc<TokenSequence>,
}

impl ApfVcpu {
    /// Whether `index` is one of the apf MSRs this module traps.
    pub fn traps(index: u32) -> bool {
        matches!(
            index,
            MSR_KVM_ASYNC_PF_EN | MSR_KVM_ASYNC_PF_INT | MSR_KVM_ASYNC_PF_ACK
        )
    }

    /// The next token of the vfsdax token space.
    pub fn next_token(&self) -> u32 {
        self.tokens.next_token()
    }

    /// Handles a trapped write of `data` to `index`: validates it as KVM would (plus the
    /// `SEND_ERROR` extension when `advertised`), forwards it to KVM with `SEND_ERROR` cleared,
    /// and records the registration. Does not complete the exit.
    pub fn on_msr_write<V: VcpuOps>(
        &mut self,
        ops: &mut V,
        index: u32,
        data: u64,
        advertised: bool,
    ) -> Result<MsrWrite, errno::Error> {
        match index {
            MSR_KVM_ASYNC_PF_EN => {
                if data & KVM_ASYNC_PF_RESERVED != 0
                    || (data & KVM_ASYNC_PF_SEND_ERROR != 0 && !advertised)
                {
                    return Ok(MsrWrite {
                        gp: true,
                        forwarded: false,
                    });
                }
                let forwarded = ops.set_msr(index, data & !KVM_ASYNC_PF_SEND_ERROR)?;
                // KVM refuses every non-zero value without an in-kernel irqchip; vfsdax can still
                // deliver its own reports then, so only a guest asking for nothing vfsdax serves
                // gets the #GP KVM would have given.
                if !forwarded && data & KVM_ASYNC_PF_SEND_ERROR == 0 && data != 0 {
                    return Ok(MsrWrite {
                        gp: true,
                        forwarded,
                    });
                }
                self.registration.msr_en = data;
                Ok(MsrWrite {
                    gp: false,
                    forwarded,
                })
            }
            MSR_KVM_ASYNC_PF_INT => {
                if data > 0xff {
                    return Ok(MsrWrite {
                        gp: true,
                        forwarded: false,
                    });
                }
                let forwarded = ops.set_msr(index, data)?;
                self.registration.vector = Some(data as u8);
                Ok(MsrWrite {
                    gp: false,
                    forwarded,
                })
            }
            _ => {
                // ACK: let KVM re-check its own queue too.
                let forwarded = ops.set_msr(index, data)?;
                Ok(MsrWrite {
                    gp: false,
                    forwarded,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_traps_exactly_en_int_ack() {
        assert_eq!(filter_bitmap(), 0b0011_1011);
        assert!(ApfVcpu::traps(MSR_KVM_ASYNC_PF_EN));
        assert!(!ApfVcpu::traps(0x4b564d01));
    }

    #[test]
    fn tokens_are_distinct_and_in_the_vfsdax_space() {
        let a = ApfVcpu::default();
        let t1 = a.next_token();
        let t2 = a.next_token();
        assert_ne!(t1, t2);
        assert!(apf::is_vfsdax_token(t1) && apf::is_vfsdax_token(t2));
    }

    #[test]
    fn vcpus_sharing_a_sequence_never_draw_the_same_token() {
        let a = ApfVcpu::default();
        let b = ApfVcpu {
            tokens: Arc::clone(&a.tokens),
            ..Default::default()
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            assert!(seen.insert(a.next_token()));
            assert!(seen.insert(b.next_token()));
        }
        // The sequence wraps inside the token space.
        let s = TokenSequence(AtomicU32::new(apf::VFSDAX_TOKEN_SEQUENCES - 1));
        assert_eq!(
            s.next_token(),
            apf::vfsdax_token(apf::VFSDAX_TOKEN_SEQUENCES - 1)
        );
        assert_eq!(s.next_token(), apf::vfsdax_token(0));
    }
}
