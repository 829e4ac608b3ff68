//! Shared test support: the ARM emulator and the synthetic estates.

pub mod emulator;
pub mod synth;
