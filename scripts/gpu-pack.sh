#!/usr/bin/env bash
# Stage, in .gpu/ (git-ignored), what scripts/gpu-check.sh needs on a bare GPU machine that cannot
# reach the network: a git clone of the MMRec checkout, a git clone of the official REARM code with
# the Python >= 3.11 training fix of docs/testing.md applied to the copy, the Baby and TikTok data,
# and wheels of the packages such an image may lack (lmdb). Run it here, then carry .gpu to the GPU
# machine (e.g. the device tool's `carry: [".gpu"]`) and run `bash scripts/gpu-check.sh` there.
#
#   MMREC_SRC          MMRec checkout (default ~/MMRec)
#   REARM_OFFICIAL_SRC official REARM clone (default ~/REARM-official)
#   REARM_DATA         folder with baby/ and tiktok/ (default ../shared/data)
#   GPU_PYTHON         the GPU machine's Python version for the wheels (default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
stage=.gpu
mmrec=${MMREC_SRC:-$HOME/MMRec}
[ "$(basename "$mmrec")" = src ] && mmrec=$(dirname "$mmrec")
official=${REARM_OFFICIAL_SRC:-$HOME/REARM-official}
data=${REARM_DATA:-../shared/data}
py=${GPU_PYTHON:-3.12}
for need in "$mmrec/src/main.py" "$official/model.py" "$data/baby/baby.inter" "$data/tiktok/tiktok.inter"; do
    [ -f "$need" ] || { echo "error: $need not found (see the variables at the top of $0)" >&2; exit 2; }
done
rm -rf "$stage"
mkdir -p "$stage/data/baby" "$stage/data/tiktok" "$stage/wheels"
git clone -q "$mmrec" "$stage/MMRec"
git clone -q "$official" "$stage/REARM-official"
rm -rf "$stage/REARM-official/data" "$stage/REARM-official/images"  # the benchmark writes its own data
# fixes 2 and 5 of docs/testing.md, CRLF kept: random.sample on a set fails on Python >= 3.11; the
# interest of a user without training items is 0/0 = NaN, which makes the loss NaN on TikTok (zeros,
# as our model gives such a user)
python3 - "$stage/REARM-official/utils/data_loader.py" <<'PY'
import re
import sys
path = sys.argv[1]
text = open(path, newline="").read()
old = "random.sample(self.all_set - set(self.user_items_dict[user]), 1)"
new = "random.sample(list(self.all_set - set(self.user_items_dict[user])), 1)"
if old not in text and new not in text:
    sys.exit(f"{path}: the negative sampling line was not found; apply fix 2 of docs/testing.md by hand")
text = text.replace(old, new)
interest = re.compile(r"^(\s*self\.u_[vt]_interest = )(?!torch\.nan_to_num)(.+?)(\r?)$", re.MULTILINE)
text, count = interest.subn(r"\1torch.nan_to_num(\2, nan=0.0)\3", text)
if count != 2 and "torch.nan_to_num" not in text:
    sys.exit(f"{path}: the two user interest lines were not found; apply fix 5 of docs/testing.md by hand")
open(path, "w", newline="").write(text)
PY
cp "$data/baby/baby.inter" "$stage/data/baby/"
cp "$data/tiktok/tiktok.inter" "$data/tiktok/image_feat.npy" "$data/tiktok/audio_feat.npy" "$stage/data/tiktok/"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$stage/wheels" lmdb
du -sh "$stage"
echo "staged $stage: carry it to the GPU machine and run: bash scripts/gpu-check.sh"
