#!/usr/bin/env bash
# A side virtualenv in which the *upstream* ImageReward / FaceScore code imports: it needs the
# transformers 4.x and timm 0.6 APIs that this project's transformers 5 / timm 1.x removed.
# torch, torchvision, numpy, Pillow... are borrowed from the project venv through a .pth file
# (appended after the side venv's own site-packages, so the pinned old packages win).
#
#   bash tests/parity/setup_side_venv.sh [SIDE_VENV]   (default /tmp/facebench-parity-venv)
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
side="${1:-/tmp/facebench-parity-venv}"
main_site="$("$here/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
python_bin="$("$here/.venv/bin/python" -c 'import sys; print(sys._base_executable)')"

"$python_bin" -m venv "$side"
side_site="$("$side/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$main_site" > "$side_site/facebench-main-venv.pth"
"$side/bin/pip" install --quiet --no-deps \
    "transformers==4.36.2" "tokenizers==0.15.2" "huggingface_hub==0.20.3" "timm==0.6.13" \
    "requests==2.32.3" "urllib3==2.2.3" "idna==3.10" "certifi==2024.8.30" \
    "charset-normalizer==3.4.0"
"$side/bin/python" -c "import transformers, timm, torch; print('side venv ok:', transformers.__version__, timm.__version__, torch.__version__)"
