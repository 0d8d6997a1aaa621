//! The truncation storm: several vCPUs of the reference VM load and store through many DAX
//! mappings served by `vfsdaxd`, in user and kernel mode, while host threads truncate, regrow,
//! punch holes in, unlink and recreate the mapped files, and another client of the share
//! truncates them through FUSE. Every event is logged on the host side with its time, and
//! [`oracle`] judges the log: every access past the end of its file gets exactly one report
//! naming the right file and offset and the outcome its guest model calls for, no access inside
//! the file gets one, nothing hangs or crashes, and nothing leaks.
//!
//! The guests ([`crate::guest::storm`]) ask for each access; the VMM picks a mapping, a page and
//! load or store, so it knows exactly which file and offset each access touches and when it was
//! in flight. A file being recreated and remapped is taken out of the draw until its new
//! mappings are in place.

pub mod oracle;
mod run;

pub use run::{run, StormConfig, StormError, StormResult};

use vfsdax_protocol::apf::DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT;
use vfsdax_protocol::report::GuestMode;

use crate::guest::{GuestAccess, GuestConfig};
use oracle::VcpuModel;

/// The guest vCPU `vcpu` runs and what its model calls for, in a cycle of four Linux-like
/// guests: user mode opted in to apf errors (SIGBUS by apf error); kernel mode opted in but
/// without `SEND_ALWAYS`, as Linux since 5.8 (machine check); user mode with stock apf, no
/// extension (machine check); kernel mode without apf (machine check).
pub fn guest_model(vcpu: u32) -> (GuestConfig, VcpuModel) {
    let (user_mode, opt_in, stock_apf) = match vcpu % 4 {
        0 => (true, true, false),
        1 => (false, true, false),
        2 => (true, false, true),
        _ => (false, false, false),
    };
    let cfg = GuestConfig {
        access: GuestAccess::HostDriven,
        opt_in,
        send_always: false,
        stock_apf,
        enable_mce: true,
        interrupts: true,
        user_mode,
        feature_bit: DEFAULT_FEATURE_ASYNC_PF_ERROR_BIT,
        baseline_offset: 0,
        access_offset: 0,
        store_value: 0,
    };
    let model = VcpuModel {
        kill: if opt_in && user_mode { 1 } else { 2 },
        mode: if user_mode {
            GuestMode::User
        } else {
            GuestMode::Kernel
        },
    };
    (cfg, model)
}

/// A small xorshift generator: the storm's draws, reproducible from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_guest_models_cover_user_and_kernel_with_and_without_the_extension() {
        let models: Vec<_> = (0..4).map(guest_model).collect();
        assert!(models.iter().all(|(c, _)| !c.send_always));
        assert_eq!(
            models
                .iter()
                .map(|(c, m)| (c.user_mode, c.opt_in, m.kill))
                .collect::<Vec<_>>(),
            vec![
                (true, true, 1),
                (false, true, 2),
                (true, false, 2),
                (false, false, 2)
            ]
        );
        assert_eq!(guest_model(5).1, models[1].1);
    }

    #[test]
    fn rng_is_reproducible_and_spreads() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.below(10)).collect();
        assert_eq!(xs, ys);
        assert!((0..10).all(|v| xs.contains(&v)));
    }
}
