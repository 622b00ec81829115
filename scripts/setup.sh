#!/usr/bin/env bash
# One-step setup: a virtual environment in .venv with MMRec's runtime pins (numpy<1.24, scipy<1.12, torch 2.14.1,
# ...; ../shared/env/mmrec-host-constraints.txt when present) plus this package and its test extra.
# Our own code also runs with current numpy 2 / scipy; these pins are what MMRec itself needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pins=requirements-mmrec-host.txt
if [ -f ../shared/env/mmrec-host-constraints.txt ]; then pins=../shared/env/mmrec-host-constraints.txt; fi
.venv/bin/pip install -q --disable-pip-version-check -r "$pins" 2>&1 | { grep -v "^WARNING: Location" || true; }
# MMRec's SLMRec imports scikit-learn, which MMRec's own requirements (and the shared pins) leave out.
.venv/bin/python -c "import sklearn" 2>/dev/null || .venv/bin/pip install -q --disable-pip-version-check 'scikit-learn<1.8' 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -c "import mmrec_rearm, torch, numpy, scipy, lmdb, yaml; print('mmrec-rearm ready: torch', torch.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__)"
