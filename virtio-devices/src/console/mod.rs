//! virtio-console: a hvc console on a host tty or file.
