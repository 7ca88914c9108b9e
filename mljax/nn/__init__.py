"""mljax.nn."""
