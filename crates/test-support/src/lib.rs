//! Harnesses that tests share. Nothing here is linked into a shipped binary.

pub mod powercut;
