#!/usr/bin/env bash
# Create .venv and install flare_cli into it, choosing a torch build that fits the machine:
# without an NVIDIA GPU, a CPU build (never gigabytes of CUDA packages); with one, the default build.
# Override with TORCH_SPEC="torch==X" (and TORCH_INDEX_URL=...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
# Extras to install: `make test` needs test (tracker and engine tests); `make demo` only ct2.
EXTRAS=${EXTRAS:-test,ct2}
sum=$(cat pyproject.toml scripts/setup.sh | cksum | cut -d' ' -f1)
for done in "$VENV"/.flare-setup-"$sum"-*; do
  [ -f "$done" ] || continue
  have=",${done##*-},"
  missing=0
  for extra in ${EXTRAS//,/ }; do [[ "$have" == *",$extra,"* ]] || missing=1; done
  [ "$missing" = 0 ] && exit 0  # already set up for this pyproject, with these extras
done
stamp="$VENV/.flare-setup-$sum-$EXTRAS"

if $VENV/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "torch already installed: $($VENV/bin/python -c 'import torch; print(torch.__version__)')"
elif [ -n "${TORCH_SPEC:-}" ]; then
  $PIP install -q "$TORCH_SPEC" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  $PIP install -q "torch>=2.4"  # GPU machine: the default (CUDA) build
else
  # CPU machine: the tested CPU build from a local wheel (find-links) if there is one,
  # else from PyTorch's CPU index. Never the default PyPI build with its CUDA packages.
  # (--no-deps first: find-links holds torch itself; its small deps come from the registry next)
  { $PIP install -q --no-index --no-deps "torch==2.13.0" 2>/dev/null && $PIP install -q "torch==2.13.0"; } \
    || $PIP install -q "torch==2.13.0" --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
fi
# ct2: the faster MT engine, which `flare demo` uses when it is installed
$PIP install -q -e ".[$EXTRAS]"
rm -f "$VENV"/.flare-setup-*
touch "$stamp"
echo "flare_cli installed in $VENV (activate with: source $VENV/bin/activate)"
