//! The worker thread that serves a device's queues.
