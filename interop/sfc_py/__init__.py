"""Independent Python implementation of the SecureFileComm protocol v3 (interop tests)."""
