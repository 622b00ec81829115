#!/usr/bin/env bash
# The CUDA checks in one command, on a machine with an NVIDIA GPU (at most about 8.5 minutes: the tests
# stop after 3, the benchmark after 5.5; a benchmark cut short keeps the datasets it finished): `pytest -m cuda`,
# then the GPU benchmark (bench/train.py --device cuda) on Baby (random features) and TikTok.
# Results go to $OUT (default ./gpu-results): cuda-tests.log / .xml, train-gpu.md / .json, bench.log,
# nvidia-smi.txt. Copy train-gpu.md / .json to bench/results/ to publish them.
#
# Needs: a Python with CUDA torch, numpy, scipy, pandas, pyyaml, lmdb, tqdm, matplotlib, torchvision,
# pytest (PYTHON, default python3); the MMRec checkout, the official REARM clone and the data, from
# $MMREC_SRC / $REARM_OFFICIAL_SRC / $REARM_DATA or, on a bare machine, from .gpu/ (scripts/gpu-pack.sh).
# On numpy >= 1.24 / scipy >= 1.12 scripts/mmrec_compat restores the two names MMRec and the official
# code still use (docs/testing.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
stage=.gpu
started=$(date +%s)
if [ -d "$stage/wheels" ] && ! "$PY" -c "import lmdb" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-site "$stage"/wheels/*.whl
    export PYTHONPATH=/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD/scripts/mmrec_compat${PYTHONPATH:+:$PYTHONPATH}
export MMREC_SRC=${MMREC_SRC:-$PWD/$stage/MMRec}
export REARM_OFFICIAL_SRC=${REARM_OFFICIAL_SRC:-$PWD/$stage/REARM-official}
data=${REARM_DATA:-$PWD/$stage/data}
export REARM_TIKTOK_DATA=$data/tiktok PYTHONUNBUFFERED=1
{ nvidia-smi; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"; } \
    > "$OUT/nvidia-smi.txt" 2>&1
cat "$OUT/nvidia-smi.txt"

echo "== pytest -m cuda"
timeout 180 "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml" tests \
    2>&1 | tee "$OUT/cuda-tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== bench/train.py --device cuda (Baby, TikTok)"
timeout 330 "$PY" bench/train.py --device cuda --dataset baby tiktok --batches 3 --no-warm --data "$data" \
    --out "$OUT/train-gpu.md" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

echo "== done in $(( $(date +%s) - started )) s: pytest -m cuda exit $tests_rc, benchmark exit $bench_rc; results in $OUT"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
