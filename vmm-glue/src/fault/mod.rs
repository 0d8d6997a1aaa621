//! Pure fault logic, no KVM calls: which exits are DAX faults ([`classify`]) and what to do about
//! them ([`policy`]).

pub mod classify;
pub mod policy;

pub use classify::{
    classify, Classification, FaultEvidence, Located, TruncatedPage, WindowGeometry, PAGE_SIZE,
};
pub use policy::{
    decide, ApfRefusal, ApfRegistration, Decision, FallbackPolicy, GuestCpuState, MceRefusal,
    Verdict,
};
