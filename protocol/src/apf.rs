//! apf (in progress).
