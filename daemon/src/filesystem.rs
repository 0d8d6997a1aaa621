//! filesystem (in progress).
