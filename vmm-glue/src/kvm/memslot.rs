//! The DAX window as a KVM memslot, with the lifetime rule enforced: the memslot holds the
//! window (an `Arc`), so the reservation cannot be unmapped while KVM may still translate guest
//! accesses into it, and dropping the memslot removes it from the VM before it lets go of the
//! window.

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vmm_sys_util::errno;

use crate::dax::DaxWindow;

/// Errors registering the window.
#[derive(Debug, thiserror::Error)]
pub enum MemslotError {
    /// The guest-physical base is not page aligned or the range does not fit in 64 bits.
    #[error("the window cannot sit at guest-physical address {gpa:#x}")]
    BadAddress {
        /// The base asked for.
        gpa: u64,
    },
    /// `KVM_SET_USER_MEMORY_REGION` failed (an overlapping or used slot, for instance).
    #[error("KVM refused the window's memslot {slot}")]
    Kvm {
        /// The slot.
        slot: u32,
        /// The ioctl error.
        #[source]
        source: errno::Error,
    },
}

/// The window registered as memslot `slot` of a VM at guest-physical address `gpa`. Drop it
/// (which removes the slot) before the VM: the slot keeps the window, the window does not keep
/// the slot.
#[derive(Debug)]
pub struct WindowMemslot {
    vm: Arc<VmFd>,
    window: Arc<DaxWindow>,
    slot: u32,
    gpa: u64,
}

impl WindowMemslot {
    /// Registers `window` as memslot `slot` of `vm` at `gpa`.
    pub fn register(
        vm: Arc<VmFd>,
        window: Arc<DaxWindow>,
        slot: u32,
        gpa: u64,
    ) -> Result<WindowMemslot, MemslotError> {
        if !gpa.is_multiple_of(window.page_size()) || gpa.checked_add(window.size()).is_none() {
            return Err(MemslotError::BadAddress { gpa });
        }
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: window.size(),
            userspace_addr: window.host_addr(),
            flags: 0,
        };
        // SAFETY: the host range is the window's reservation, which stays mapped (inaccessible
        // placeholder or DAX mappings, never a hole) for as long as the window lives; this
        // memslot holds the window until the slot is removed again in `drop`.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|source| MemslotError::Kvm { slot, source })?;
        Ok(WindowMemslot {
            vm,
            window,
            slot,
            gpa,
        })
    }

    /// The window.
    pub fn window(&self) -> &Arc<DaxWindow> {
        &self.window
    }

    /// The guest-physical address of the window's first byte.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The memslot number.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Drop for WindowMemslot {
    fn drop(&mut self) {
        let region = kvm_userspace_memory_region {
            slot: self.slot,
            guest_phys_addr: self.gpa,
            memory_size: 0,
            userspace_addr: self.window.host_addr(),
            flags: 0,
        };
        // SAFETY: a zero-size region deletes the slot; KVM stops using the window's range, which
        // is still mapped (the window outlives this call).
        let _ = unsafe { self.vm.set_user_memory_region(region) };
    }
}
