#!/usr/bin/env bash
# One-command set-up: torch, Detectron2, the other dependencies and mgd_det (editable, with the
# study and benchmarks packages beside it).
# Safe to re-run: a finished venv set-up whose stamp matches the current requirements and
# imports exits early; the other modes re-run pip, which skips what is already there.
#
#   bash scripts/setup.sh                            # default: a fresh venv in .venv/
#   MGD_ENV=current bash scripts/setup.sh            # into the current Python (conda, cluster
#                                                    # module, container): keeps its torch,
#                                                    # torchvision and numpy
#   MGD_WHEELHOUSE=DIR bash scripts/setup.sh         # offline, from a folder made by
#                                                    # scripts/wheelhouse.sh (with either mode)
#   MGD_ENV=current MGD_WHEELHOUSE=DIR MGD_TARGET=SITE bash scripts/setup.sh
#       # every wheel of DIR into the folder SITE (no dependency resolution, nothing else
#       # changed), for PYTHONPATH=SITE:<repo>: an environment that has the rest but is
#       # read-only or must stay as it is
#   MGD_DETECTRON2=source bash scripts/setup.sh      # build Detectron2 from GitHub (needs internet)
#   MGD_VENV=/path/to/venv bash scripts/setup.sh     # another venv location
#   PYTHON=python3.12 bash scripts/setup.sh          # the interpreter (of the venv, or "current")
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_MODE="${MGD_ENV:-venv}"
VENV="${MGD_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
WHEELHOUSE="${MGD_WHEELHOUSE:-}"
TARGET_DIR="${MGD_TARGET:-}"
# torch/torchvision: 2.14.1/0.29.1 is the newest pair these machines hold and is known to
# work with the registry Detectron2 wheel (see ../shared/DESIGN.md §3). Installed only where
# no torch is importable.
TORCH_SPEC="${MGD_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
# The registry wheel carrying a recent Detectron2 tree (tagged cp310; its Python code runs
# on 3.11 and 3.12). `python -m installer` installs it without pip's tag check.
D2_REGISTRY_SPEC="sal-detectron2==0.7.2"
D2_SOURCE_URL="git+https://github.com/facebookresearch/detectron2.git"
D2_MODE="${MGD_DETECTRON2:-auto}"

die() { echo "setup.sh: ERROR: $*" >&2; exit 1; }
step() { echo "setup.sh: $*"; }
trap 'die "step failed at line $LINENO (see the output above)"' ERR

case "$ENV_MODE" in venv|current) ;; *) die "MGD_ENV must be 'venv' or 'current', not '$ENV_MODE'" ;; esac
if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || die "MGD_WHEELHOUSE=$WHEELHOUSE is not a folder (make one with scripts/wheelhouse.sh download DIR)"
  WHEELHOUSE="$(cd "$WHEELHOUSE" && pwd)"
  ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1 || die "no wheels in $WHEELHOUSE (make them with scripts/wheelhouse.sh download DIR)"
  [ "$D2_MODE" != "source" ] || die "MGD_DETECTRON2=source needs internet; offline, put a Detectron2 wheel built from source into $WHEELHOUSE instead"
fi
if [ -n "$TARGET_DIR" ]; then
  [ "$ENV_MODE" = current ] && [ -n "$WHEELHOUSE" ] || die "MGD_TARGET needs MGD_ENV=current and MGD_WHEELHOUSE=DIR"
fi

# --- the interpreter --------------------------------------------------------------------
STAMP=""
# Whatever PYTHON names must be a Python 3.9+ (a typo or another program would otherwise
# surface much later as "torch install failed").
python_ok() { [ "$("$1" -c 'import sys; print("python-ok" if sys.version_info >= (3, 9) else "too-old")' 2>/dev/null)" = python-ok ]; }
command -v "$PYTHON_BIN" >/dev/null 2>&1 || die "no interpreter '$PYTHON_BIN' (PYTHON): set PYTHON=/path/to/python3"
python_ok "$PYTHON_BIN" || die "PYTHON=$PYTHON_BIN is not a Python 3.9 or newer interpreter: set PYTHON=/path/to/python3"
if [ "$ENV_MODE" = venv ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    step "creating virtual environment $VENV"
    "$PYTHON_BIN" -m venv "$VENV" || die "could not create a venv with $PYTHON_BIN (is the venv module installed?)"
  fi
  PY="$VENV/bin/python"
  STAMP="$VENV/.mgd_setup_stamp"
  want_stamp="$(cat "$ROOT/requirements.txt" "$ROOT/scripts/setup.sh" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] \
     && "$PY" -c "import torch, torchvision, detectron2, mgd_det" >/dev/null 2>&1; then
    step "already set up ($VENV); nothing to do"
    exit 0
  fi
else
  PY="$(command -v "$PYTHON_BIN")" || die "no interpreter '$PYTHON_BIN' (set PYTHON=...)"
  step "installing into the current environment: $("$PY" -c 'import sys; print(sys.prefix, sys.version.split()[0])')"
fi
PIP=("$PY" -m pip --disable-pip-version-check)
INDEX=()
if [ -n "$WHEELHOUSE" ]; then
  INDEX=(--no-index --find-links "$WHEELHOUSE")
  step "offline: installing only from $WHEELHOUSE"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- torch: kept when importable (CUDA builds included), else installed -----------------
if "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  step "keeping torch $("$PY" -c 'import torch, torchvision; print(torch.__version__, "/ torchvision", torchvision.__version__)')"
elif [ -n "$TARGET_DIR" ]; then
  die "MGD_TARGET installs next to an environment that has torch and torchvision, and $PY has none"
elif [ "$ENV_MODE" = current ] && "$PY" -c "import torch" >/dev/null 2>&1; then
  die "this environment has torch $("$PY" -c 'import torch; print(torch.__version__)') but no working torchvision: install the torchvision release made for it (from the same source as torch), then re-run"
else
  step "installing torch ($TORCH_SPEC)"
  # shellcheck disable=SC2086
  "${PIP[@]}" install ${INDEX[@]+"${INDEX[@]}"} $TORCH_SPEC \
    || die "torch install failed${WHEELHOUSE:+ (is torch in $WHEELHOUSE? build it without --no-torch)}"
fi

if [ -n "$TARGET_DIR" ]; then
  # --- target folder: every wheel of the wheelhouse, as it is -----------------------------
  mkdir -p "$TARGET_DIR"
  TARGET_DIR="$(cd "$TARGET_DIR" && pwd)"
  mapfile -t wheels < <(ls "$WHEELHOUSE"/*.whl | grep -v '/sal_detectron2-')
  dups="$(printf '%s\n' "${wheels[@]##*/}" | cut -d- -f1 | tr 'A-Z.-' 'a-z__' | sort | uniq -d | tr '\n' ' ')"
  [ -z "$dups" ] || die "several versions of $dups in $WHEELHOUSE: keep one of each"
  step "installing ${#wheels[@]} wheels into $TARGET_DIR (no dependency resolution)"
  "${PIP[@]}" install -q --no-index --no-deps --no-compile --upgrade --target "$TARGET_DIR" "${wheels[@]}" \
    || die "installing the wheelhouse into $TARGET_DIR failed"
  if ! PYTHONPATH="$TARGET_DIR" "$PY" -c "import detectron2" >/dev/null 2>&1; then
    d2_wheel="$(ls "$WHEELHOUSE"/sal_detectron2-*.whl 2>/dev/null | head -n 1)"
    [ -n "$d2_wheel" ] || die "no Detectron2 importable and no sal_detectron2 wheel in $WHEELHOUSE"
    step "unpacking Detectron2 ($(basename "$d2_wheel")) into $TARGET_DIR"
    "$PY" -m zipfile -e "$d2_wheel" "$TARGET_DIR" || die "unpacking $d2_wheel failed"
  fi
  pypath="$TARGET_DIR:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  PYTHONPATH="$pypath" "$PY" -c "import torch, torchvision, detectron2, mgd_det; from detectron2.modeling import build_model" \
    || die "post-install import check failed (with PYTHONPATH=$pypath)"
  step "done. Use: export PYTHONPATH=$pypath"
  exit 0
fi

# --- dependencies: requirements.txt, never replacing torch, torchvision or numpy ----------
"$PY" - >"$tmp/keep.txt" <<'EOF'
import importlib.metadata as md
for name in ("torch", "torchvision", "numpy"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
step "installing dependencies from requirements.txt (keeping $(tr '\n' ' ' <"$tmp/keep.txt"))"
"${PIP[@]}" install ${INDEX[@]+"${INDEX[@]}"} -c "$tmp/keep.txt" -r "$ROOT/requirements.txt" \
  || die "dependency install failed${WHEELHOUSE:+ (a wheel missing from $WHEELHOUSE, or one needing another version of what this environment keeps? rebuild it with scripts/wheelhouse.sh ... --constraint FILE, FILE listing $(tr '
' ' ' <"$tmp/keep.txt"))}"

# --- Detectron2 ---------------------------------------------------------------------------
if "$PY" -c "import detectron2" >/dev/null 2>&1 && [ "$D2_MODE" != "source" ]; then
  step "Detectron2 already importable: $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
elif [ "$D2_MODE" = "source" ]; then
  step "building Detectron2 from source ($D2_SOURCE_URL)"
  "${PIP[@]}" install --no-build-isolation "$D2_SOURCE_URL" || die "building Detectron2 from source failed (needs internet and a compiler)"
elif [ -n "$WHEELHOUSE" ] && ls "$WHEELHOUSE"/detectron2-*.whl >/dev/null 2>&1; then
  step "installing Detectron2 built from source, from $WHEELHOUSE"
  "${PIP[@]}" install "${INDEX[@]}" --no-deps detectron2 || die "installing the Detectron2 wheel of $WHEELHOUSE failed"
else
  if [ -n "$WHEELHOUSE" ]; then
    d2_wheel="$(ls "$WHEELHOUSE"/sal_detectron2-*.whl 2>/dev/null | head -n 1)"
    [ -n "$d2_wheel" ] || die "no sal_detectron2 wheel in $WHEELHOUSE (scripts/wheelhouse.sh adds it)"
  else
    step "downloading the registry Detectron2 wheel $D2_REGISTRY_SPEC"
    "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$tmp" "$D2_REGISTRY_SPEC" \
      || die "could not download $D2_REGISTRY_SPEC from the package registry"
    d2_wheel="$(ls "$tmp"/*.whl | head -n 1)"
  fi
  step "installing Detectron2 from $(basename "$d2_wheel") (without its cp310 tag check)"
  "$PY" -m installer "$d2_wheel" || die "installing the Detectron2 wheel failed"
fi

step "installing mgd_det, study and benchmarks (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation ${INDEX[@]+"${INDEX[@]}"} -e "$ROOT" || die "installing mgd_det failed"

"$PY" -c "import torch, torchvision, detectron2, mgd_det; from detectron2.modeling import build_model" \
  || die "post-install import check failed"
# Without the working folder on sys.path, so that a checkout's folders cannot stand in for the install.
"$PY" -c "import importlib.util as u, sys; sys.path.remove(''); sys.exit(not all(u.find_spec(n) for n in ('study', 'benchmarks')))" \
  || die "the study and benchmarks packages are not importable after the install"
if [ -n "$STAMP" ]; then
  echo "$want_stamp" > "$STAMP"
  step "done. Activate with: source $VENV/bin/activate"
else
  step "done ($PY)"
fi
