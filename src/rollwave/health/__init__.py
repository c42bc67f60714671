"""rollwave.health."""
