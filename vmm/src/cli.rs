//! Command-line parsing into a [`crate::config::VmConfig`].
