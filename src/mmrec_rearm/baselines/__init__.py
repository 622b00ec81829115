"""MMRec plug-ins for the Table-2 baselines that MMRec does not ship (MICRO, DiffMM, ...).

Each model is a ``GeneralRecommender`` (through :mod:`mmrec_rearm.host`) in its own module, with
its settings in ``configs/model/<Model>.yaml``; the installer places a one-line shim per model
into ``<MMRec>/src/models/``. docs/baselines.md lists, per model, the equations covered, where
each default comes from and every deviation from the paper or the authors' code.
"""
