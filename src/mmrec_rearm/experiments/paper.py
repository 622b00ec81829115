"""Published numbers of the REARM paper, Table 2, as data.

Top-k results on the test split, columns R@10, R@20, N@10, N@20, for the three Amazon
datasets. Shown beside our own numbers; they are never used for any selection.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

PAPER_COLUMNS = ("R@10", "R@20", "N@10", "N@20")

TABLE2: Dict[str, Dict[str, Tuple[float, float, float, float]]] = {
    "baby": {
        "BPR": (0.0357, 0.0575, 0.0192, 0.0249),
        "LightGCN": (0.0479, 0.0754, 0.0257, 0.0328),
        "ApeGNN": (0.0501, 0.0775, 0.0267, 0.0338),
        "MGDN": (0.0495, 0.0783, 0.0272, 0.0346),
        "VBPR": (0.0423, 0.0663, 0.0223, 0.0284),
        "MMGCN": (0.0421, 0.0660, 0.0220, 0.0282),
        "DualGNN": (0.0513, 0.0803, 0.0278, 0.0352),
        "GRCN": (0.0532, 0.0824, 0.0282, 0.0358),
        "LATTICE": (0.0547, 0.0850, 0.0292, 0.0370),
        "BM3": (0.0564, 0.0883, 0.0301, 0.0383),
        "SLMRec": (0.0521, 0.0772, 0.0289, 0.0354),
        "MICRO": (0.0584, 0.0929, 0.0318, 0.0407),
        "MGCN": (0.0620, 0.0964, 0.0339, 0.0427),
        "DiffMM": (0.0623, 0.0975, 0.0328, 0.0411),
        "FREEDOM": (0.0627, 0.0992, 0.0330, 0.0424),
        "LGMRec": (0.0644, 0.1002, 0.0349, 0.0440),
        "DRAGON": (0.0662, 0.1021, 0.0345, 0.0435),
        "MIG-GT": (0.0665, 0.1021, 0.0361, 0.0452),
        "REARM": (0.0705, 0.1105, 0.0377, 0.0479),
    },
    "sports": {
        "BPR": (0.0432, 0.0653, 0.0241, 0.0298),
        "LightGCN": (0.0569, 0.0864, 0.0311, 0.0387),
        "ApeGNN": (0.0608, 0.0892, 0.0333, 0.0407),
        "MGDN": (0.0614, 0.0932, 0.0340, 0.0422),
        "VBPR": (0.0558, 0.0856, 0.0307, 0.0384),
        "MMGCN": (0.0401, 0.0636, 0.0209, 0.0270),
        "DualGNN": (0.0588, 0.0899, 0.0324, 0.0404),
        "GRCN": (0.0599, 0.0919, 0.0330, 0.0413),
        "LATTICE": (0.0620, 0.0953, 0.0335, 0.0421),
        "BM3": (0.0656, 0.0980, 0.0355, 0.0438),
        "SLMRec": (0.0663, 0.0990, 0.0365, 0.0450),
        "MICRO": (0.0679, 0.1050, 0.0367, 0.0463),
        "MGCN": (0.0729, 0.1106, 0.0397, 0.0496),
        "DiffMM": (0.0671, 0.1017, 0.0377, 0.0458),
        "FREEDOM": (0.0717, 0.1089, 0.0385, 0.0481),
        "LGMRec": (0.0720, 0.1068, 0.0390, 0.0480),
        "DRAGON": (0.0752, 0.1139, 0.0413, 0.0512),
        "MIG-GT": (0.0753, 0.1130, 0.0414, 0.0511),
        "REARM": (0.0836, 0.1231, 0.0455, 0.0553),
    },
    "clothing": {
        "BPR": (0.0206, 0.0303, 0.0114, 0.0138),
        "LightGCN": (0.0361, 0.0544, 0.0197, 0.0243),
        "ApeGNN": (0.0378, 0.0538, 0.0204, 0.0244),
        "MGDN": (0.0362, 0.0551, 0.0199, 0.0247),
        "VBPR": (0.0281, 0.0415, 0.0158, 0.0192),
        "MMGCN": (0.0227, 0.0361, 0.0154, 0.0154),
        "DualGNN": (0.0452, 0.0675, 0.0242, 0.0298),
        "GRCN": (0.0421, 0.0657, 0.0224, 0.0284),
        "LATTICE": (0.0492, 0.0733, 0.0268, 0.0330),
        "BM3": (0.0422, 0.0621, 0.0231, 0.0281),
        "SLMRec": (0.0442, 0.0659, 0.0241, 0.0296),
        "MICRO": (0.0521, 0.0772, 0.0283, 0.0347),
        "MGCN": (0.0641, 0.0945, 0.0347, 0.0428),
        "DiffMM": (0.0522, 0.0791, 0.0288, 0.0354),
        "FREEDOM": (0.0629, 0.0941, 0.0341, 0.0420),
        "LGMRec": (0.0555, 0.0828, 0.0302, 0.0371),
        "DRAGON": (0.0671, 0.0979, 0.0365, 0.0443),
        "MIG-GT": (0.0636, 0.0934, 0.0347, 0.0422),
        "REARM": (0.0700, 0.0998, 0.0377, 0.0454),
    },
}


#: MMRec model name -> its Table 2 row name, where they differ (MMRec imports a model by its
#: Python class name, which cannot hold the paper's hyphen).
PAPER_NAMES: Dict[str, str] = {"MIGGT": "MIG-GT"}


def paper_name(model: str) -> str:
    """The Table 2 row name of the MMRec model ``model`` (the name itself for most models)."""
    return PAPER_NAMES.get(model, model)


def paper_row(dataset: str, model: str) -> Optional[Tuple[float, float, float, float]]:
    """Table 2's (R@10, R@20, N@10, N@20) for ``model`` (its MMRec or paper name) on ``dataset``
    (names case-insensitive), or None when the paper has no such row."""
    table = TABLE2.get(dataset.lower())
    if table is None:
        return None
    lookup = {name.lower(): values for name, values in table.items()}
    return lookup.get(paper_name(model).lower())


#: Table 2's rows, top to bottom (the same on every dataset): the 18 baselines, then REARM.
PAPER_ROWS: Tuple[str, ...] = tuple(TABLE2["baby"])


def paper_order(models: Sequence[str]) -> List[str]:
    """``models`` (MMRec or paper names) in Table 2's row order; models the paper does not list
    follow in the order given."""
    rank = {name.lower(): index for index, name in enumerate(PAPER_ROWS)}
    listed = sorted((m for m in models if paper_name(m).lower() in rank), key=lambda m: rank[paper_name(m).lower()])
    return listed + [m for m in models if paper_name(m).lower() not in rank]


def has_paper_numbers(dataset: str) -> bool:
    return dataset.lower() in TABLE2
