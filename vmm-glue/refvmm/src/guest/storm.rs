//! The storm loop ([`super::GuestAccess::HostDriven`]): the guest asks the VMM for its next
//! access over [`port::REQUEST`], finds it in its [`layout::MAILBOX`] (the GPA, then the value to
//! store, 0 for a load), does it and reports it: [`port::VAL_LO`]/[`port::VAL_HI`] for a load,
//! [`port::STORED`] for a store. A GPA of 0 ends the loop.
//!
//! A task killed by an apf error or a machine check (the handlers report [`port::SIGBUS`]) is
//! replaced by a new one: fresh kernel stack, back to user mode if configured, and the loop goes
//! on, as a Linux guest's other tasks do after one gets SIGBUS.

use super::asm::{Asm, Cond, Label};
use super::program::{enter_user, report_rax};
use super::{layout, port, GuestConfig};

/// Emits the loop; binds `killed` (where the handlers send a killed task) and jumps to `finish`
/// when the VMM says stop. Returns the address of the load instruction.
pub(super) fn body(a: &mut Asm, cfg: &GuestConfig, vcpu: u32, finish: Label, killed: Label) -> u64 {
    let at = |addr| layout::private(vcpu, addr);
    let task = a.label();
    let top = a.label();
    let store = a.label();
    a.bind(task);
    if cfg.user_mode {
        enter_user(a, cfg, vcpu, top);
    }
    a.bind(top);
    a.report(port::REQUEST as u8, 0);
    a.load_rax_abs(at(layout::MAILBOX))
        .test_rax_rax()
        .jcc(Cond::Zero, finish);
    a.mov_rbx_rax();
    a.load_rax_abs(at(layout::MAILBOX) + 8)
        .mov_rcx_rax()
        .test_rax_rax()
        .jcc(Cond::NotZero, store);
    let load_rip = a.here();
    a.load_rax_from_rbx();
    report_rax(a, port::VAL_LO, port::VAL_HI);
    a.jmp(top);
    a.bind(store);
    a.store_rcx_to_rbx();
    a.report(port::STORED as u8, 0);
    a.jmp(top);

    // A killed task: the handler's frame is abandoned; a new task starts on a fresh stack.
    a.bind(killed);
    a.mov_rsp_imm(at(layout::STACK_TOP));
    if cfg.interrupts && !cfg.user_mode {
        a.sti();
    }
    a.jmp(task);
    load_rip
}

#[cfg(test)]
mod tests {
    use super::super::program::{build, load};
    use super::super::{GuestAccess, GuestConfig};
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn cfg(user_mode: bool) -> GuestConfig {
        GuestConfig {
            access: GuestAccess::HostDriven,
            opt_in: true,
            send_always: false,
            stock_apf: false,
            enable_mce: true,
            interrupts: true,
            user_mode,
            feature_bit: vfsdax_protocol::apf::DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT,
            baseline_offset: 0,
            access_offset: 0,
            store_value: 0,
        }
    }

    #[test]
    fn the_loop_reads_its_own_mailbox_and_loads_through_rbx() {
        for user in [false, true] {
            let img = build(&cfg(user), 2).expect("builds");
            let at = (img.access_rip - img.entry) as usize;
            assert_eq!(&img.code[at..at + 3], &[0x48, 0x8b, 0x03], "mov rax, [rbx]");
            let mailbox = layout::private(2, layout::MAILBOX).to_le_bytes();
            let has = |needle: &[u8]| img.code.windows(needle.len()).any(|w| w == needle);
            assert!(has(&[[0x48, 0xa1].as_slice(), &mailbox].concat()));
            // A killed task gets vCPU 2's kernel stack back.
            let stack = layout::private(2, layout::STACK_TOP).to_le_bytes();
            assert!(has(&[[0x48, 0xbc].as_slice(), &stack].concat()));
            let mem =
                GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), layout::RAM_SIZE as usize)])
                    .expect("mem");
            load(&mem, &img).expect("loads");
        }
    }
}
