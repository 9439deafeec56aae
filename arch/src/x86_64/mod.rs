//! x86_64 guest setup.

pub mod layout;
