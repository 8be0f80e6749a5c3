"""Pages built from stored results alone."""
