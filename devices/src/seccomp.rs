//! Per-thread seccomp filters: building them from allow-lists and installing them.
