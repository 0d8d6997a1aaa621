//! Pure fault logic, no KVM calls: which exits are DAX faults ([`classify()`]) and what to do about
//! them ([`policy`]); [`decode`] recovers the address of a fault the exit did not give.

pub mod classify;
pub mod decode;
pub mod policy;

pub use classify::{
    classify, Classification, FaultEvidence, Located, TruncatedPage, WindowGeometry, PAGE_SIZE,
};
pub use policy::{
    decide, ApfRefusal, ApfRegistration, Decision, FallbackPolicy, GuestCpuState, MceRefusal,
    Verdict,
};
