"""rollwave.engine."""
