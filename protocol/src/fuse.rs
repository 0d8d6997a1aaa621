//! fuse (in progress).
