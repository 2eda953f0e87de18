//! Harness for end-to-end tests: starts the real binary.
