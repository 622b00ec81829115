"""Lets MMRec and the official REARM code run on a current numpy / scipy (the GPU check's image),
imported at interpreter start when this folder is on PYTHONPATH (scripts/gpu-check.sh puts it there).

Restores exactly what those projects use and the libraries removed, with the old meaning:

* numpy < 1.24 aliases of the builtins (``np.float`` is ``float``, ...), used by MMRec's metrics;
* ``scipy.sparse.dok_matrix._update`` (a plain dict update of the entries, removed in scipy 1.12),
  used by the official ``get_norm_adj_mat`` and MMRec's graph models.

Nothing is changed where the names still exist. Our package needs neither.
"""
import builtins
import warnings

try:
    import numpy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _name in ("float", "int", "bool", "object", "complex", "str"):
            if not hasattr(numpy, _name):
                setattr(numpy, _name, getattr(builtins, _name))
except ImportError:
    pass

try:
    import scipy.sparse

    if not hasattr(scipy.sparse.dok_matrix, "_update"):
        def _update(self, entries):
            """Set the given {(row, col): value} entries without checks (scipy < 1.12)."""
            self._dict.update(entries)

        scipy.sparse.dok_matrix._update = _update
except ImportError:
    pass
