//! Placeholder; the server arrives with its own issue.
