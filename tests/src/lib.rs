//! Spanner emulator harness for screamer's end-to-end tests.
