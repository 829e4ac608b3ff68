//! Shared test support: the ARM emulator.

pub mod emulator;
