"""Table-2 baselines that MMRec does not ship, as MMRec plug-in models (one module per model)."""
