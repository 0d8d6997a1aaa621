//! fault (in progress).
