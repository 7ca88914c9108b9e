"""mljax.train."""
