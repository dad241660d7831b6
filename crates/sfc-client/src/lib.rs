//! Placeholder; the client arrives with its own issue.
