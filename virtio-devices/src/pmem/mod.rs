//! pmem placeholder
