//! passthrough (in progress).
