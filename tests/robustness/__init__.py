"""Robustness suite (issue 7): dirty data, bad configs and faults, all generated on the fly."""
