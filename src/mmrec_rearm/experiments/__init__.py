"""Experiment tooling on top of MMRec: side-by-side comparisons (Table 2), DRAGON/DualGNN's user
graph file, and conversion of the official REARM splits. See docs/experiments.md.

Nothing here imports MMRec or torch: every MMRec run happens in a subprocess (:mod:`.runner`).
"""
from .commands import add_subcommands
from .compare import CompareReport, compare
from .datasets import convert_official_splits, detect_feature_files, write_dataset_yaml
from .user_graph import cooccurrence_neighbours, make_user_graph_dict

__all__ = ["add_subcommands", "compare", "CompareReport", "convert_official_splits", "detect_feature_files",
           "write_dataset_yaml", "cooccurrence_neighbours", "make_user_graph_dict"]
