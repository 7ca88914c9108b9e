"""mljax.linear."""
