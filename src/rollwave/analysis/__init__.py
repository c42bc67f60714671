"""rollwave.analysis."""
