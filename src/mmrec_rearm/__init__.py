"""mmrec-rearm."""
