"""mljax.cluster."""
