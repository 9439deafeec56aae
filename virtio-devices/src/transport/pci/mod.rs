//! The modern (virtio 1.x) virtio-pci transport.
