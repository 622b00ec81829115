"""Experiment tooling on top of MMRec: side-by-side comparisons (Table 2), ablations (Table 3,
Fig. 4), sensitivity (Fig. 3), the refinement heatmap (Fig. 5), checkpoints and top-k
recommendations, DRAGON/DualGNN's user graph file, conversion of the official REARM splits, single
runs with live progress and resume, runs in parallel, and Optuna tuning. See docs/experiments.md and docs/tuning.md.

Nothing here imports MMRec: every MMRec run happens in a subprocess (:mod:`.runner`). torch is
imported only by the commands that load a checkpoint (``recommend``, ``heatmap``); optuna only
when a study is opened (``tune``, ``compare --from-tune``).
"""
from .commands import add_subcommands
from .compare import CompareReport, compare
from .datasets import convert_official_splits, detect_feature_files, write_dataset_yaml
from .ablate import ablate
from .heatmap import heatmap
from .recommend import recommend
from .sensitivity import sensitivity
from .single import prepare_run, run_one
from .tune import tune
from .user_graph import cooccurrence_neighbours, make_user_graph_dict

__all__ = ["add_subcommands", "compare", "CompareReport", "convert_official_splits", "detect_feature_files",
           "write_dataset_yaml", "cooccurrence_neighbours", "make_user_graph_dict", "ablate", "sensitivity",
           "heatmap", "recommend", "tune", "run_one", "prepare_run"]
