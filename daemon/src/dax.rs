//! dax (in progress).
