"""rollwave.spec."""
