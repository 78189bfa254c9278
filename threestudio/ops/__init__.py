"""Pure tensor math: no state, no I/O, CPU-testable."""
