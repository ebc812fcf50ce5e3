//! Shared pieces of the end-to-end tests. The tests themselves live in `e2e/`.

/// The line a writer prints after a write was acknowledged: `ack <case> <text>`.
pub fn ack_line(case: &str, text: &str) -> String {
    format!("ack {case} {text}")
}
