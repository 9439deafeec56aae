//! aarch64 guest setup (in progress: see issue #15).
