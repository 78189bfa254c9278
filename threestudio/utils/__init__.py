"""Shared utilities: config parsing, typing vocabulary, errors, I/O."""
