//! Machine-check injection: the MCE ioctls kvm-ioctls lacks, and the SRAR record QEMU builds for
//! a `BUS_MCEERR_AR` (action-required memory error).

use kvm_bindings::kvm_x86_mce;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

/// The ioctl numbers (private: the macros generate `pub fn`s).
mod nr {
    use super::kvm_x86_mce;
    use super::{ioctl_ior_nr, ioctl_iow_nr};

    const KVMIO: u32 = 0xAE;
    ioctl_ior_nr!(KVM_X86_GET_MCE_CAP_SUPPORTED, KVMIO, 0x9d, u64);
    ioctl_iow_nr!(KVM_X86_SETUP_MCE, KVMIO, 0x9c, u64);
    ioctl_iow_nr!(KVM_X86_SET_MCE, KVMIO, 0x9e, kvm_x86_mce);
}
use nr::{KVM_X86_GET_MCE_CAP_SUPPORTED, KVM_X86_SETUP_MCE, KVM_X86_SET_MCE};

/// `MCG_CAP.MCG_CTL_P`: `MCG_CTL` present.
pub const MCG_CTL_P: u64 = 1 << 8;
/// `MCG_CAP.MCG_SER_P`: software error recovery supported.
pub const MCG_SER_P: u64 = 1 << 24;
/// Number of banks vfsdax gives the guest.
pub const BANKS: u64 = 10;
/// The bank vfsdax reports DAX errors in (the last one, as QEMU uses bank 9 for memory errors).
pub const DAX_BANK: u32 = 9;
/// The `MCG_CAP` value vfsdax sets up.
pub const MCG_CAP: u64 = MCG_SER_P | MCG_CTL_P | BANKS;

/// `MCG_STATUS` MSR.
pub const MSR_MCG_STATUS: u32 = 0x17a;
/// `MCG_STATUS.RIPV`: restart IP valid.
pub const MCG_STATUS_RIPV: u64 = 1 << 0;
/// `MCG_STATUS.EIPV`: error IP valid (the IP points at the faulting instruction).
pub const MCG_STATUS_EIPV: u64 = 1 << 1;
/// `MCG_STATUS.MCIP`: machine check in progress.
pub const MCG_STATUS_MCIP: u64 = 1 << 2;

/// `MCi_STATUS.VAL`.
pub const MCI_STATUS_VAL: u64 = 1 << 63;
/// `MCi_STATUS.OVER`.
pub const MCI_STATUS_OVER: u64 = 1 << 62;
/// `MCi_STATUS.UC`: uncorrected.
pub const MCI_STATUS_UC: u64 = 1 << 61;
/// `MCi_STATUS.EN`: reporting enabled.
pub const MCI_STATUS_EN: u64 = 1 << 60;
/// `MCi_STATUS.MISCV`: `MCi_MISC` valid.
pub const MCI_STATUS_MISCV: u64 = 1 << 59;
/// `MCi_STATUS.ADDRV`: `MCi_ADDR` valid.
pub const MCI_STATUS_ADDRV: u64 = 1 << 58;
/// `MCi_STATUS.S`: signalled (SRAR/SRAO).
pub const MCI_STATUS_S: u64 = 1 << 56;
/// `MCi_STATUS.AR`: action required.
pub const MCI_STATUS_AR: u64 = 1 << 55;
/// MCA error code of a memory-read error on the data path (as QEMU uses for `BUS_MCEERR_AR`).
pub const MCI_ERROR_CODE_DATA_READ: u64 = 0x134;
/// `MCi_MISC`: address mode "physical address", least significant valid bit 12 (a page).
pub const MCI_MISC_PHYS_PAGE: u64 = (2 << 6) | 12;

/// MSR index of `MCi_STATUS` for `bank`.
pub fn msr_mci_status(bank: u32) -> u32 {
    0x401 + 4 * bank
}

/// MSR index of `MCi_ADDR` for `bank`.
pub fn msr_mci_addr(bank: u32) -> u32 {
    0x402 + 4 * bank
}

/// The SRAR record for an access to `gpa`. `ip_at_access` says whether the guest RIP is on the
/// faulting instruction (a rewound load or store); after a store that could not be rewound RIP
/// is past it, so `EIPV` is cleared.
pub fn srar_record(gpa: u64, ip_at_access: bool) -> kvm_x86_mce {
    let status = MCI_STATUS_VAL
        | MCI_STATUS_UC
        | MCI_STATUS_EN
        | MCI_STATUS_MISCV
        | MCI_STATUS_ADDRV
        | MCI_STATUS_S
        | MCI_STATUS_AR
        | MCI_ERROR_CODE_DATA_READ;
    let mut mcg = MCG_STATUS_MCIP | MCG_STATUS_RIPV;
    if ip_at_access {
        mcg |= MCG_STATUS_EIPV;
    }
    kvm_x86_mce {
        status,
        addr: gpa,
        misc: MCI_MISC_PHYS_PAGE,
        mcg_status: mcg,
        bank: DAX_BANK as u8,
        ..Default::default()
    }
}

/// `KVM_X86_GET_MCE_CAP_SUPPORTED` on the `/dev/kvm` fd.
pub fn mce_cap_supported(kvm: &kvm_ioctls::Kvm) -> Result<u64, errno::Error> {
    let mut cap = 0u64;
    // SAFETY: `kvm` is an open /dev/kvm fd, the ioctl writes exactly one u64 into `cap`, which
    // lives for the whole call; the return value is checked.
    let ret = unsafe { ioctl_with_mut_ref(kvm, KVM_X86_GET_MCE_CAP_SUPPORTED(), &mut cap) };
    if ret < 0 {
        return Err(errno::Error::last());
    }
    Ok(cap)
}

/// `KVM_X86_SETUP_MCE` with [`MCG_CAP`]; KVM also sets every `MCi_CTL` and `MCG_CTL` to all ones.
pub fn setup_mce(vcpu: &VcpuFd) -> Result<(), errno::Error> {
    let cap = MCG_CAP;
    // SAFETY: `vcpu` is a vCPU fd, the ioctl reads one u64 from `cap`, alive for the call; the
    // return value is checked.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_X86_SETUP_MCE(), &cap) };
    if ret < 0 {
        return Err(errno::Error::last());
    }
    Ok(())
}

/// `KVM_X86_SET_MCE`. The caller must have checked guest CR4.MCE and that no machine check is
/// in progress, or KVM shuts the guest down (triple fault).
pub fn set_mce(vcpu: &VcpuFd, m: &kvm_x86_mce) -> Result<(), errno::Error> {
    // SAFETY: `vcpu` is a vCPU fd, the ioctl reads one `kvm_x86_mce` (64 bytes, repr(C)) from
    // `m`, alive for the call; the return value is checked.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_X86_SET_MCE(), m) };
    if ret < 0 {
        return Err(errno::Error::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        assert_eq!(KVM_X86_GET_MCE_CAP_SUPPORTED(), 0x8008AE9D);
        assert_eq!(KVM_X86_SETUP_MCE(), 0x4008AE9C);
        assert_eq!(KVM_X86_SET_MCE(), 0x4040AE9E);
    }

    #[test]
    fn srar_record_matches_qemu_bus_mceerr_ar() {
        let m = srar_record(0x4000_2000, true);
        assert_eq!(m.status & 0xffff, 0x134);
        // Bits 63..55: VAL, (OVER), UC, EN, MISCV, ADDRV, (PCC), S, AR.
        assert_eq!(m.status >> 55, 0b1_0111_1011);
        assert_eq!(m.addr, 0x4000_2000);
        assert_eq!(
            m.mcg_status,
            MCG_STATUS_MCIP | MCG_STATUS_RIPV | MCG_STATUS_EIPV
        );
        assert_eq!(u32::from(m.bank), DAX_BANK);
        assert_eq!(srar_record(0, false).mcg_status & MCG_STATUS_EIPV, 0);
        assert_eq!(MCG_CAP, 0x100010a);
        assert_eq!(msr_mci_status(9), 0x425);
        assert_eq!(msr_mci_addr(9), 0x426);
    }
}
