//! How a rust-vmm VMM links `vfsdax-vmm-glue`: the DAX window of its virtio-fs device as a KVM
//! memslot, the backend's SHMEM_MAP/UNMAP requests served on the glue's thread, the shrink
//! watcher, and the exit hook in the vCPU loop. Everything marked `VMM:` is the VMM's own code,
//! reduced here to a one-page guest that writes to port 0x80; the glue calls are the rest.
//!
//! Run it against a daemon: `vfsdaxd --shared-dir DIR --socket-path S --cache-size 64M &` then
//! `cargo run -p vfsdax-vmm-glue --example vmm_integration -- S` (needs /dev/kvm).

use std::sync::Arc;
use std::time::Instant;

use kvm_ioctls::Kvm;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use vfsdax_vmm_glue::dax::{connect, ConnectOptions};
use vfsdax_vmm_glue::fault::FallbackPolicy;
use vfsdax_vmm_glue::kvm::{
    apf, mce, DaxFaultHandler, Exit, FaultConfig, Handled, KvmVcpu, ShrinkWatcher, VcpuOps,
    WindowMemslot,
};

/// Where the VMM puts the window in guest-physical memory (its device's shared memory BAR).
const WINDOW_GPA: u64 = 1 << 32;
/// The CPUID bit the VMM gives `ASYNC_PF_ERROR` (a free bit of the KVM features leaf).
const APF_ERROR_BIT: u32 = vfsdax_vmm_glue::protocol::apf::DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = std::env::args()
        .nth(1)
        .ok_or("usage: vmm_integration SOCKET")?;

    // VMM: its vhost-user-fs device, with the protocol features DAX needs.
    let mut fs = Frontend::connect(&socket, 2)?;
    fs.set_owner()?;
    fs.set_features(fs.get_features()? | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())?;
    let wanted = VhostUserProtocolFeatures::SHMEM
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::REPLY_ACK;
    let offered = fs.get_protocol_features()?;
    fs.set_protocol_features(offered & wanted)?;

    // Glue: reserve the window the backend asks for (capped) and serve its map requests on a
    // thread of the glue's own. `dax.stop()` (or dropping it) ends that thread.
    let dax = connect(
        &mut fs,
        ConnectOptions {
            reply_ack: true,
            ..Default::default()
        },
    )?;

    // VMM: the VM, its RAM and the vCPU.
    let kvm = Kvm::new()?;
    let vm = Arc::new(kvm.create_vm()?);
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)])?;
    ram.write_slice(&[0xe6, 0x80, 0xf4], GuestAddress(0))?; // out 0x80, al; hlt
                                                            // SAFETY: `ram` is a live mapping this function owns until after the VM is gone.
    unsafe {
        vm.set_user_memory_region(kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: 0x1000,
            userspace_addr: ram.get_host_address(GuestAddress(0))? as u64,
            flags: 0,
        })?
    };
    vm.create_irq_chip()?;

    // Glue: the window as memslot 1 (the slot keeps the window alive; drop it before the VM),
    // the apf MSR trap, the CPUID bit, machine checks.
    let slot = WindowMemslot::register(Arc::clone(&vm), Arc::clone(dax.window()), 1, WINDOW_GPA)?;
    apf::setup_vm(&vm)?;
    let mut cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
    apf::advertise_feature(&mut cpuid, APF_ERROR_BIT)?;
    let fd = vm.create_vcpu(0)?;
    fd.set_cpuid2(&cpuid)?;
    mce::setup_mce(&fd)?;
    let mut regs = fd.get_regs()?;
    regs.rip = 0;
    regs.rflags = 2;
    fd.set_regs(&regs)?;
    let mut sregs = fd.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    fd.set_sregs(&sregs)?;

    // Glue: one fault handler per vCPU (the others `share()` vCPU 0's state), and the shrink
    // watcher that fences a file's lost pages when it shrinks: no periodic duty for the VMM.
    let config = FaultConfig {
        policy: FallbackPolicy::Mce,
        apf_advertised: true,
    };
    let mut handler = DaxFaultHandler::new(0, Arc::clone(dax.window()), WINDOW_GPA, ram, config)?;
    let _watcher = ShrinkWatcher::start(handler.shared(), Arc::clone(dax.window()))?;

    // The vCPU loop: the glue sees every exit first.
    let mut vcpu = KvmVcpu::new(fd, Arc::clone(&vm));
    loop {
        let exit = vcpu.run()?;
        match handler.handle(&mut vcpu, &exit, Instant::now())? {
            Handled::Resume(Some(report)) => eprintln!("DAX fault: {:?}", report.resolve()),
            Handled::Resume(None) => {}
            // VMM: its own exits (port I/O, MMIO of its devices, ...); this guest is done.
            Handled::NotMine if matches!(exit, Exit::IoOut { port: 0x80, .. }) => break,
            Handled::NotMine => {}
        }
    }
    println!(
        "window of {} MiB at {WINDOW_GPA:#x} (memslot {}), {} map requests; fault counters {:?}",
        dax.window().size() >> 20,
        slot.slot(),
        dax.handler().stats().maps,
        handler.counters()
    );
    drop(slot);
    Ok(())
}
