//! Disk image formats behind virtio-blk: raw files and qcow2.
