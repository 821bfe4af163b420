#!/usr/bin/env bash
# Offline installs, step 1: download every wheel the project needs into a folder (a
# "wheelhouse"), for this Python or another version and platform. Step 2, on the machine
# without network: `MGD_WHEELHOUSE=DIR bash scripts/setup.sh` (see README.md).
#
#   bash scripts/wheelhouse.sh download DIR                  # this Python and platform, torch included
#   bash scripts/wheelhouse.sh download DIR --no-torch       # for an environment that has torch
#   bash scripts/wheelhouse.sh download DIR --python-version 3.12 --platform manylinux_2_28_x86_64
#   bash scripts/wheelhouse.sh download DIR --no-deps REQ... # exactly these requirements
#   bash scripts/wheelhouse.sh download DIR --constraint FILE # e.g. the numpy the target keeps
#
# Default set: requirements.txt, torch/torchvision ($MGD_TORCH_SPEC, as setup.sh) and their
# dependencies. REQ arguments replace requirements.txt; --no-deps fetches no dependencies (for
# an environment that has the rest); --constraint (pip's -c, repeatable) pins versions that the
# target environment keeps (setup.sh never replaces an installed torch, torchvision or numpy).
# The registry Detectron2 wheel (sal-detectron2, tagged cp310; setup.sh installs it without
# the tag check) is always added. Everything is a wheel: packages published only as sdists are
# built here (`pip wheel --no-deps`) and must then be pure Python. A manylinux platform means
# a machine with that glibc: wheels for older glibc tags are accepted too (pip itself matches
# tags exactly). Re-running into the same folder reuses the wheels already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
TORCH_SPEC="${MGD_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
D2_REGISTRY_SPEC="sal-detectron2==0.7.2"

die() { echo "wheelhouse.sh: ERROR: $*" >&2; exit 1; }
step() { echo "wheelhouse.sh: $*"; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit "${1:-0}"; }

[ $# -ge 1 ] || usage 1
case "$1" in
  download) shift ;;
  -h|--help) usage 0 ;;
  *) die "unknown command '$1' (the command is: download DIR [options] [REQ...])" ;;
esac
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || die "download needs a folder: download DIR [options] [REQ...]"
DIR="$1"; shift

PY_VERSION=""; PLATFORMS=(); WITH_TORCH=1; WITH_DEPS=1; REQS=(); CONSTRAINTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PY_VERSION="${2:?--python-version needs a value, e.g. 3.12}"; shift 2 ;;
    --platform) PLATFORMS+=("${2:?--platform needs a value, e.g. manylinux_2_28_x86_64}"); shift 2 ;;
    --no-torch) WITH_TORCH=0; shift ;;
    --no-deps) WITH_DEPS=0; shift ;;
    --constraint) CONSTRAINTS+=(-c "${2:?--constraint needs a file}"); shift 2 ;;
    -h|--help) usage 0 ;;
    -*) die "unknown option '$1'" ;;
    *) REQS+=("$1"); shift ;;
  esac
done

# manylinux_2_N (manylinux2014 = 2_17, manylinux2010 = 2_12, manylinux1 = 2_5) -> every tag
# a glibc 2.N machine accepts, newest first.
expand_platform() {
  local plat="$1" arch glibc
  case "$plat" in
    manylinux1_*) arch="${plat#manylinux1_}"; glibc=5 ;;
    manylinux2010_*) arch="${plat#manylinux2010_}"; glibc=12 ;;
    manylinux2014_*) arch="${plat#manylinux2014_}"; glibc=17 ;;
    manylinux_2_*) arch="${plat#manylinux_2_*_}"; glibc="${plat#manylinux_2_}"; glibc="${glibc%%_*}" ;;
    *) echo "$plat"; return ;;
  esac
  local n
  for ((n = glibc; n >= 5; n--)); do echo "manylinux_2_${n}_${arch}"; done
  [ "$glibc" -ge 17 ] && echo "manylinux2014_${arch}"
  [ "$glibc" -ge 12 ] && echo "manylinux2010_${arch}"
  echo "manylinux1_${arch}"
}

TARGET=(--only-binary=:all:)
[ -n "$PY_VERSION" ] && TARGET+=(--python-version "$PY_VERSION" --implementation cp)
for plat in ${PLATFORMS[@]+"${PLATFORMS[@]}"}; do
  while read -r p; do TARGET+=(--platform "$p"); done < <(expand_platform "$plat")
done
cross=0
{ [ -n "$PY_VERSION" ] || [ ${#PLATFORMS[@]} -gt 0 ]; } && cross=1

if [ ${#REQS[@]} -eq 0 ]; then
  REQS=(-r "$ROOT/requirements.txt")
fi
if [ "$WITH_TORCH" = 1 ]; then
  # shellcheck disable=SC2206
  REQS+=($TORCH_SPEC)
fi
DEPS=()
[ "$WITH_DEPS" = 0 ] && DEPS=(--no-deps)

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
PIP=("$PY" -m pip --disable-pip-version-check)
log="$(mktemp)"; trap 'rm -f "$log"' EXIT

step "downloading into $DIR (${PY_VERSION:-this Python}, ${PLATFORMS[*]:-this platform}; torch: $([ "$WITH_TORCH" = 1 ] && echo yes || echo no); dependencies: $([ "$WITH_DEPS" = 1 ] && echo yes || echo no))"
built=" "; ok=0
for _ in $(seq 1 30); do
  if "${PIP[@]}" download "${TARGET[@]}" ${DEPS[@]+"${DEPS[@]}"} ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"} --find-links "$DIR" -d "$DIR" "${REQS[@]}" >"$log" 2>&1; then
    ok=1; break
  fi
  # A requirement without a wheel for the target: build one from its sdist, then resolve again
  # (the folder is a --find-links source, so the next round sees it).
  # pip names it either directly or, when several versions of its parent were tried, as the
  # requirement of the newest parent in its "conflict is caused by" lines.
  req="$( { sed -n 's/.*Could not find a version that satisfies the requirement \([^ ]*\).*/\1/p' "$log"
            sed -n '/conflict is caused by/,$ s/.* depends on \([^ ]*\).*/\1/p' "$log"; } | head -n 1)"
  if [ -z "$req" ] || [[ "$built" == *" $req "* ]]; then
    cat "$log" >&2
    die "pip download failed${req:+ for $req} (see above); is the package registry reachable?"
  fi
  step "no wheel for $req: building one from its sdist"
  name="${req%%[<>=!~;[]*}"
  before="$(ls "$DIR")"
  "${PIP[@]}" wheel -q --no-deps --no-binary "$name" -w "$DIR" "$req" \
    || die "building a wheel of $req failed (see above)"
  new="$(comm -13 <(echo "$before") <(ls "$DIR") | grep '\.whl$' || true)"
  if [ "$cross" = 1 ] && [ -n "$new" ] && ! grep -q -- '-none-any\.whl$' <<<"$new"; then
    rm -f "$DIR/$new"
    die "$req has no wheel for the target and its sdist is not pure Python: build its wheel on the target machine"
  fi
  built+="$req "
done
[ "$ok" = 1 ] || { cat "$log" >&2; die "pip download still failing after building 30 sdists"; }

step "adding the registry Detectron2 wheel ($D2_REGISTRY_SPEC, tagged cp310)"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$DIR" "$D2_REGISTRY_SPEC" \
  || die "could not download $D2_REGISTRY_SPEC from the package registry"

# Two versions of one package stop an install that takes every wheel of the folder.
dups="$(ls "$DIR" | grep '\.whl$' | cut -d- -f1 | tr 'A-Z.-' 'a-z__' | sort | uniq -d | tr '\n' ' ')"
[ -z "$dups" ] || step "WARNING: several versions of: $dups(remove the old ones if you install the whole folder)"
step "done: $(ls "$DIR" | grep -c '\.whl$') wheels, $(du -sh "$DIR" | cut -f1) in $DIR"
