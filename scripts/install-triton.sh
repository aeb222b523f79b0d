#!/usr/bin/env bash
# Install a real Triton Inference Server for the tests in var/triton-venv (its own venv).
#
# nvidia-pytriton (PyPI) bundles tritonserver 2.51 with the python backend only, so the
# tests serve ONNX models through a python-backend model that runs onnxruntime. The server's
# python stub needs numpy<2, which is why this lives apart from .venv. Idempotent: a stamp
# file records what was installed; delete var/triton-venv to reinstall.
# Prints the path of the tritonserver binary (and the LD_LIBRARY_PATH it needs) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${TRITON_VENV:-var/triton-venv}"
# Keep in step with tests/engines/runtimes/conftest.py, which reads the same layout.
PACKAGES=("nvidia-pytriton==0.7.0" "numpy>=1.26,<2" "onnxruntime>=1.18,<1.21")
STAMP="$VENV/.installed-stamp"
WANT="${PACKAGES[*]}"

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "installing Triton (${WANT}) into $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet "${PACKAGES[@]}"
  printf '%s' "$WANT" >"$STAMP"
fi

server="$("$VENV/bin/python" - <<'PY'
import pathlib, pytriton
root = pathlib.Path(pytriton.__file__).parent
found = sorted(p for p in root.rglob("tritonserver") if p.is_file())
print(found[0] if found else "")
PY
)"
if [ -z "$server" ]; then
  echo "error: no tritonserver binary inside nvidia-pytriton in $VENV" >&2
  exit 1
fi
# The wheel ships the python backend without its stub and one stub per Python version
# (pytriton copies the matching one in at run time); lay out a backend directory with the
# stub of this venv's Python so a plain tritonserver can use --backend-directory.
dist="$(dirname "$(dirname "$server")")"
version="$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
backends="$VENV/triton-backends"
mkdir -p "$backends/python"
cp -f "$dist"/backends/python/libtriton_python.so "$dist"/backends/python/triton_python_backend_utils.py \
  "$backends/python/"
cp -f "$dist/python_backend_stubs/$version/triton_python_backend_stub" "$backends/python/"

# The stub needs libpython (a pyenv Python keeps it in LIBDIR, off the loader's path) and the
# CUDA runtime stubs the wheel keeps in nvidia_pytriton.libs; it runs the python found first
# on PATH, which must be this venv's (numpy<2, onnxruntime).
libdir="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
libs="$(dirname "$(dirname "$dist")")/nvidia_pytriton.libs"
echo "tritonserver: $server"
echo "backends: $backends"
echo "run it with: PATH=$VENV/bin:\$PATH LD_LIBRARY_PATH=$libdir:$libs $server" \
  "--backend-directory $backends --model-repository DIR"
