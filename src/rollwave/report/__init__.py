"""rollwave.report."""
