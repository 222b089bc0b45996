//! emulation
