"""Layer 0: helpers with no dtrl dependency: atomic file I/O, the divergence guard, the run logger."""
