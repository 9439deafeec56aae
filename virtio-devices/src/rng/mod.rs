//! virtio-rng: entropy from a host source.
