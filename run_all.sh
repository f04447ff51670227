#!/usr/bin/env bash
# Full sweep of the ActDistill benchmark: demos -> teacher -> students -> evaluation -> report.
#
#   bash run_all.sh                    # the embedded default profile
#   bash run_all.sh --profile smoke    # minutes: what CI can afford
#   bash run_all.sh --profile full     # everything
#   bash run_all.sh --test             # set up, then run the test suite
#   bash run_all.sh --setup            # set up only
#
# On first use it creates its own virtual environment in .venv (torch==2.13.0 first, so pip
# never pulls a CUDA build), installs this package, and reuses both afterwards. Reruns resume:
# finished episodes and stages are skipped.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV=${ACTDISTILL_VENV:-$ROOT/.venv}
PROFILE=default
MODE=run
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE=${2:?--profile needs a value: smoke, default or full}; shift 2 ;;
    --profile=*) PROFILE=${1#--profile=}; shift ;;
    --test) MODE=test; shift; PYTEST_ARGS=("$@"); break ;;
    --setup) MODE=setup; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1' (valid: --profile smoke|default|full, --test, --setup)" >&2; exit 2 ;;
  esac
done
case "$PROFILE" in smoke|default|full) ;; *)
  echo "run_all.sh: unknown profile '$PROFILE' (valid: smoke, default, full)" >&2; exit 2 ;;
esac

setup() {
  local stamp="$VENV/.actdistill-setup"
  local want
  want=$(cat pyproject.toml | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  echo "[setup] creating the environment in $VENV (first use; a few minutes)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  # openpi's client, for the protocol-compatibility test only: its release pins numpy<2, which it does not need
  "$VENV/bin/python" -m pip install -q --no-deps "openpi-client==0.1.2"
  echo "$want" > "$stamp"
  echo "[setup] done"
}

setup
export PATH="$VENV/bin:$PATH"
export MUJOCO_GL=${MUJOCO_GL:-egl}
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}

case "$MODE" in
  setup) exit 0 ;;
  test)
    set +e
    python -m pytest "${PYTEST_ARGS[@]}"
    rc=$?
    if [ $rc -eq 5 ]; then echo "run_all.sh: pytest collected no tests; failing" >&2; exit 1; fi
    exit $rc ;;
esac

exec actdistill sweep --profile "$PROFILE"
