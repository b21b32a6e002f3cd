//! UDP conntrack cleanup (work in progress).
