#!/usr/bin/env bash
# One-command set-up: creates .venv/ in the project root and installs torch, Detectron2,
# the other dependencies and mgd_det itself (editable). Safe to re-run: when the stamp of
# a finished install matches the current requirements and everything imports, it exits early.
#
#   bash scripts/setup.sh                      # default: registry Detectron2 wheel if needed
#   MGD_DETECTRON2=source bash scripts/setup.sh  # build Detectron2 from GitHub (needs internet)
#   MGD_VENV=/path/to/venv bash scripts/setup.sh # use another venv location
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MGD_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
# torch/torchvision: 2.14.1/0.29.1 is the newest pair these machines hold and is known to
# work with the registry Detectron2 wheel (see ../shared/DESIGN.md §3).
TORCH_SPEC="${MGD_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
# The registry wheel carrying a recent Detectron2 tree (python code runs on 3.11).
D2_REGISTRY_SPEC="sal-detectron2==0.7.2"
D2_SOURCE_URL="git+https://github.com/facebookresearch/detectron2.git"
D2_MODE="${MGD_DETECTRON2:-auto}"

die() { echo "setup.sh: ERROR: $*" >&2; exit 1; }
step() { echo "setup.sh: $*"; }
trap 'die "step failed at line $LINENO (see the output above)"' ERR

STAMP="$VENV/.mgd_setup_stamp"
want_stamp="$(cat "$ROOT/requirements.txt" "$ROOT/scripts/setup.sh" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment $VENV"
  "$PYTHON_BIN" -m venv "$VENV" || die "could not create a venv with $PYTHON_BIN (is the venv module installed?)"
fi
PY="$VENV/bin/python"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] \
   && "$PY" -c "import torch, torchvision, detectron2, mgd_det" >/dev/null 2>&1; then
  step "already set up ($VENV); nothing to do"
  exit 0
fi

PIP=("$PY" -m pip --disable-pip-version-check)
step "installing torch ($TORCH_SPEC)"
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  "${PIP[@]}" install $TORCH_SPEC || die "torch install failed"
fi

step "installing dependencies from requirements.txt"
"${PIP[@]}" install -r "$ROOT/requirements.txt" || die "dependency install failed"

if "$PY" -c "import detectron2" >/dev/null 2>&1 && [ "$D2_MODE" != "source" ]; then
  step "Detectron2 already importable: $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
elif [ "$D2_MODE" = "source" ]; then
  step "building Detectron2 from source ($D2_SOURCE_URL)"
  "${PIP[@]}" install --no-build-isolation "$D2_SOURCE_URL" || die "building Detectron2 from source failed (needs internet and a compiler)"
else
  step "installing Detectron2 from the registry wheel $D2_REGISTRY_SPEC"
  tmp="$(mktemp -d)"
  "${PIP[@]}" download --no-deps --only-binary=:all: --python-version 3.10 -d "$tmp" "$D2_REGISTRY_SPEC" \
    || die "could not download $D2_REGISTRY_SPEC from the package registry"
  "$PY" -m installer "$tmp"/*.whl || die "installing the Detectron2 wheel failed"
  rm -rf "$tmp"
fi

step "installing mgd_det (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT" || die "installing mgd_det failed"

"$PY" -c "import torch, torchvision, detectron2, mgd_det; from detectron2.modeling import build_model" \
  || die "post-install import check failed"
echo "$want_stamp" > "$STAMP"
step "done. Activate with: source $VENV/bin/activate"
