//! The chv virtual machine monitor.
//!
//! `config` is the VM description shared by the CLI and the API; `cli` turns
//! Cloud Hypervisor-style command-line options into it.

pub mod cli;
pub mod config;
