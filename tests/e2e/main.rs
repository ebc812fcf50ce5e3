//! End-to-end tests: one binary, one module per scenario.

mod crash;
mod story;
