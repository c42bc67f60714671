"""rollwave.drivers."""
