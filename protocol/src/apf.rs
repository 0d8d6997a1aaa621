//! The paravirtual async-page-fault (apf) ABI of KVM on x86, with the error extension of the
//! June 2020 patch "kvm: Add capability to be able to report async pf error to guest".
//!
//! Stock KVM implements everything here except [`KVM_ASYNC_PF_SEND_ERROR`] and
//! [`KvmVcpuPvApfData::ready_flags`]; the vfsdax VMM glue implements those from userspace.
//!
//! Protocol, in short: the host injects a #PF with CR2 = token and
//! [`KVM_PV_REASON_PAGE_NOT_PRESENT`] in `flags` ("page not present"); later it writes `token`
//! (and, with the extension, `ready_flags`) and raises the vector the guest wrote to
//! [`MSR_KVM_ASYNC_PF_INT`] ("page ready"). The guest clears `token` and writes 1 to
//! [`MSR_KVM_ASYNC_PF_ACK`]; the slot is free again when `token` reads 0.

use vm_memory::ByteValued;

/// CPUID leaf of the KVM paravirtual signature (`KVMKVMKVM\0\0\0`); EAX = highest leaf.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
/// CPUID leaf of the KVM paravirtual features (bits in EAX).
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// `KVM_FEATURE_ASYNC_PF`: the guest may enable async page faults.
pub const KVM_FEATURE_ASYNC_PF: u32 = 4;
/// `KVM_FEATURE_ASYNC_PF_INT`: 'page ready' is delivered as an interrupt.
pub const KVM_FEATURE_ASYNC_PF_INT: u32 = 14;
/// The bit the 2020 patch gave `KVM_FEATURE_ASYNC_PF_ERROR`. Upstream later assigned it to
/// `KVM_FEATURE_MSI_EXT_DEST_ID`, so it must not be used by default.
pub const PATCH_FEATURE_ASYNC_PF_ERROR_BIT: u32 = 15;
/// Feature bits upstream KVM has assigned (0–17 and 24 = `KVM_FEATURE_CLOCKSOURCE_STABLE_BIT`);
/// the configurable error-feature bit must avoid all of them.
pub const UPSTREAM_FEATURE_BITS: &[u32] = &[
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 24,
];
/// Default CPUID 0x40000001 EAX bit advertising `ASYNC_PF_ERROR`.
///
/// Why 23: bits 0–17 are all assigned upstream (15 `MSI_EXT_DEST_ID`, 16 `HC_MAP_GPA_RANGE`,
/// 17 `MIGRATION_CONTROL`) and bit 24 is `KVM_FEATURE_CLOCKSOURCE_STABLE_BIT`, which Linux guests
/// test. Bit 23 is the highest bit below 24 that upstream has left free, so newly allocated
/// upstream bits (which grow from 18 upwards) reach it last. It is a vfsdax convention, not
/// upstream ABI: a guest must be told which bit to test, so the VMM makes it configurable.
pub const DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT: u32 = 23;

/// Returns true if `bit` may carry `ASYNC_PF_ERROR` without colliding with an upstream feature.
pub fn is_free_feature_bit(bit: u32) -> bool {
    bit < 32 && !UPSTREAM_FEATURE_BITS.contains(&bit)
}

/// `MSR_KVM_ASYNC_PF_EN`: bits 63:6 GPA of the apf data, plus the `KVM_ASYNC_PF_*` flags.
pub const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
/// `MSR_KVM_ASYNC_PF_INT`: bits 7:0 = the 'page ready' vector.
pub const MSR_KVM_ASYNC_PF_INT: u32 = 0x4b56_4d06;
/// `MSR_KVM_ASYNC_PF_ACK`: the guest writes 1 after consuming a 'page ready'.
pub const MSR_KVM_ASYNC_PF_ACK: u32 = 0x4b56_4d07;
/// First MSR of the KVM paravirtual range `0x4b564d00..0x4b564d08` (for an MSR filter).
pub const MSR_KVM_PV_BASE: u32 = 0x4b56_4d00;

/// `KVM_ASYNC_PF_ENABLED`.
pub const KVM_ASYNC_PF_ENABLED: u64 = 1 << 0;
/// `KVM_ASYNC_PF_SEND_ALWAYS`: deliver also when the guest was in kernel mode.
pub const KVM_ASYNC_PF_SEND_ALWAYS: u64 = 1 << 1;
/// `KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT` (nested guests).
pub const KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT: u64 = 1 << 2;
/// `KVM_ASYNC_PF_DELIVERY_AS_INT`: 'page ready' through the [`MSR_KVM_ASYNC_PF_INT`] vector.
pub const KVM_ASYNC_PF_DELIVERY_AS_INT: u64 = 1 << 3;
/// `KVM_ASYNC_PF_SEND_ERROR` (the extension): the guest handles `ready_flags`.
pub const KVM_ASYNC_PF_SEND_ERROR: u64 = 1 << 4;
/// Reserved bit 5: a write with it set is refused (#GP).
pub const KVM_ASYNC_PF_RESERVED: u64 = 1 << 5;
/// Mask of the apf data GPA in [`MSR_KVM_ASYNC_PF_EN`] (64-byte aligned).
pub const KVM_ASYNC_PF_ADDR_MASK: u64 = !0x3f;

/// `flags` value of a 'page not present' #PF.
pub const KVM_PV_REASON_PAGE_NOT_PRESENT: u32 = 1;
/// `ready_flags` bit 0 (the extension): the page could not be brought in.
pub const KVM_PV_REASON_PAGE_ERROR: u32 = 1;
/// The token of KVM's broadcast 'page ready' (wake every sleeper), sent e.g. on enable.
pub const BROADCAST_TOKEN: u32 = u32::MAX;

/// Byte offset of [`KvmVcpuPvApfData::flags`].
pub const APF_FLAGS_OFFSET: u64 = 0;
/// Byte offset of [`KvmVcpuPvApfData::token`].
pub const APF_TOKEN_OFFSET: u64 = 4;
/// Byte offset of [`KvmVcpuPvApfData::ready_flags`].
pub const APF_READY_FLAGS_OFFSET: u64 = 8;
/// Byte offset of [`KvmVcpuPvApfData::enabled`].
pub const APF_ENABLED_OFFSET: u64 = 60;

/// `struct kvm_vcpu_pv_apf_data` with the error extension: 64 bytes, little endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmVcpuPvApfData {
    /// [`KVM_PV_REASON_PAGE_NOT_PRESENT`] while a 'page not present' #PF is being delivered.
    pub flags: u32,
    /// Token of a 'page ready' event; 0 when the slot is free.
    pub token: u32,
    /// [`KVM_PV_REASON_PAGE_ERROR`] when the page of `token` could not be brought in.
    pub ready_flags: u32,
    /// Padding up to `enabled`.
    pub pad: [u8; 48],
    /// Set to 1 by the guest once it has enabled apf.
    pub enabled: u32,
}

impl Default for KvmVcpuPvApfData {
    fn default() -> Self {
        KvmVcpuPvApfData {
            flags: 0,
            token: 0,
            ready_flags: 0,
            pad: [0; 48],
            enabled: 0,
        }
    }
}

// SAFETY: `KvmVcpuPvApfData` is `repr(C)` and made only of integers and a byte array whose sizes
// add up to 64 with no implicit padding (pinned by the layout tests below), so every bit pattern
// is a valid value and it contains no pointers.
unsafe impl ByteValued for KvmVcpuPvApfData {}

/// Low 12 bits of every token vfsdax generates.
///
/// KVM's tokens are `(counter << 12) | vcpu_id`, so their low 12 bits are the vCPU id. vfsdax
/// tokens use 0xfff there, an id the VMM never gives a vCPU ([`MAX_VCPU_ID`]), so the two token
/// spaces cannot collide; 0xfff also makes every vfsdax token non-zero and different from the
/// broadcast token `u32::MAX` for every sequence number below `0xfffff`.
pub const VFSDAX_TOKEN_TAG: u32 = 0xfff;
/// Highest vCPU id compatible with the vfsdax token space.
pub const MAX_VCPU_ID: u32 = VFSDAX_TOKEN_TAG - 1;
/// Number of distinct vfsdax tokens before the sequence wraps.
pub const VFSDAX_TOKEN_SEQUENCES: u32 = 0xfffff;

/// The vfsdax token for sequence number `seq` (taken modulo [`VFSDAX_TOKEN_SEQUENCES`]).
pub fn vfsdax_token(seq: u32) -> u32 {
    ((seq % VFSDAX_TOKEN_SEQUENCES) << 12) | VFSDAX_TOKEN_TAG
}

/// Returns true if `token` belongs to the vfsdax token space.
pub fn is_vfsdax_token(token: u32) -> bool {
    token != BROADCAST_TOKEN && token & 0xfff == VFSDAX_TOKEN_TAG
}

/// Returns true if KVM could generate `token` for a vCPU whose id is `vcpu_id`.
pub fn is_kvm_token_of(token: u32, vcpu_id: u32) -> bool {
    token != BROADCAST_TOKEN && token & 0xfff == vcpu_id & 0xfff
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn apf_data_layout_is_pinned() {
        assert_eq!(size_of::<KvmVcpuPvApfData>(), 64);
        assert_eq!(align_of::<KvmVcpuPvApfData>(), 4);
        assert_eq!(offset_of!(KvmVcpuPvApfData, flags) as u64, APF_FLAGS_OFFSET);
        assert_eq!(offset_of!(KvmVcpuPvApfData, token) as u64, APF_TOKEN_OFFSET);
        assert_eq!(
            offset_of!(KvmVcpuPvApfData, ready_flags) as u64,
            APF_READY_FLAGS_OFFSET
        );
        assert_eq!(offset_of!(KvmVcpuPvApfData, pad), 12);
        assert_eq!(
            offset_of!(KvmVcpuPvApfData, enabled) as u64,
            APF_ENABLED_OFFSET
        );
    }

    #[test]
    fn apf_data_bytes_are_little_endian_at_the_abi_offsets() {
        let d = KvmVcpuPvApfData {
            flags: KVM_PV_REASON_PAGE_NOT_PRESENT,
            token: 0x1234_5fff,
            ready_flags: KVM_PV_REASON_PAGE_ERROR,
            enabled: 1,
            ..Default::default()
        };
        let b = d.as_slice();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[0..4], &[1, 0, 0, 0]);
        assert_eq!(&b[4..8], &[0xff, 0x5f, 0x34, 0x12]);
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert!(b[12..60].iter().all(|&x| x == 0));
        assert_eq!(&b[60..64], &[1, 0, 0, 0]);
        let back = KvmVcpuPvApfData::from_slice(b).copied();
        assert_eq!(back, Some(d));
    }

    #[test]
    fn msr_numbers_and_bits_match_the_abi() {
        assert_eq!(MSR_KVM_ASYNC_PF_EN, 0x4b564d02);
        assert_eq!(MSR_KVM_ASYNC_PF_INT, 0x4b564d06);
        assert_eq!(MSR_KVM_ASYNC_PF_ACK, 0x4b564d07);
        assert_eq!(MSR_KVM_ASYNC_PF_EN - MSR_KVM_PV_BASE, 2);
        assert_eq!(KVM_ASYNC_PF_SEND_ERROR, 0x10);
        assert_eq!(KVM_ASYNC_PF_DELIVERY_AS_INT, 0x8);
        assert_eq!(KVM_ASYNC_PF_ADDR_MASK & 0x3f, 0);
    }

    #[test]
    fn default_feature_bit_avoids_upstream_bits() {
        assert!(is_free_feature_bit(DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT));
        assert!(!is_free_feature_bit(PATCH_FEATURE_ASYNC_PF_ERROR_BIT));
        assert!(!is_free_feature_bit(16));
        assert!(!is_free_feature_bit(17));
        assert!(!is_free_feature_bit(24));
        assert!(!is_free_feature_bit(KVM_FEATURE_ASYNC_PF));
        assert!(!is_free_feature_bit(KVM_FEATURE_ASYNC_PF_INT));
        assert!(!is_free_feature_bit(32));
    }

    #[test]
    fn vfsdax_tokens_never_collide_with_kvm_tokens() {
        for seq in [0u32, 1, 2, 0xffffe, 0xfffff, 0x100000, u32::MAX] {
            let t = vfsdax_token(seq);
            assert_ne!(t, 0, "token 0 means a free slot");
            assert_ne!(t, BROADCAST_TOKEN);
            assert!(is_vfsdax_token(t));
            for vcpu in [0, 1, 63, 1023, MAX_VCPU_ID] {
                assert!(!is_kvm_token_of(t, vcpu), "seq {seq} vcpu {vcpu}");
            }
        }
        // KVM tokens are never taken for ours.
        for counter in [0u32, 1, 0xfffff] {
            for vcpu in [0u32, 5, MAX_VCPU_ID] {
                let kvm = (counter << 12) | vcpu;
                assert!(!is_vfsdax_token(kvm));
                assert!(is_kvm_token_of(kvm, vcpu));
            }
        }
        assert_ne!(vfsdax_token(0), vfsdax_token(1));
    }
}
