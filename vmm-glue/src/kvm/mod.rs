//! kvm (in progress).
