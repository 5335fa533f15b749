#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu/setup_env.sh installs on a GPU machine
# without network, into $WHEELHOUSE (default .whl, git-ignored).
#
#   PYTHON=.venv/bin/python bash benchmarks/gpu/fetch_wheels.sh [--help]
#
# Run it on a machine that reaches PyPI. The set is what ctal-ds needs for the
# training probes beyond an image that already has torch, triton, numpy, scipy,
# scikit-learn, numba, tokenizers, matplotlib, tqdm, psutil, ninja and the like:
# deepspeed, webdataset, librosa, soundfile, espeakng-loader and their missing
# dependencies (about 17 MB), for CPython $GPU_PYTHON_VERSION (default 3.12) on
# manylinux x86-64. MLflow is left out (dozens of packages; without it a run logs
# to metrics.jsonl only).
#
# DeepSpeed is published as a source archive only: it is built here into a
# py3-none-any wheel with no compiled ops (DS_BUILD_OPS=0; FusedAdam is compiled on
# first use there), which needs $PYTHON to have torch and setuptools.
set -u -o pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-$REPO/.whl}
VERSION=${GPU_PYTHON_VERSION:-3.12}
# Versions as in the environment the project's tests run in.
DEEPSPEED=deepspeed==0.19.8
WHEELS=(
    webdataset==1.0.2 braceexpand==0.1.7
    librosa==0.11.0 audioread==3.1.0 soxr==1.1.0 pooch==1.9.0 decorator platformdirs
    soundfile==0.14.0 cffi pycparser
    espeakng-loader==0.2.4
    hjson==3.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types typing-inspection typing_extensions
)
mkdir -p "$WHEELHOUSE"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any; do
    platforms+=(--platform "$p")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$VERSION" --implementation cp \
    "${platforms[@]}" -d "$WHEELHOUSE" "${WHEELS[@]}" || exit 1
if compgen -G "$WHEELHOUSE/deepspeed-*.whl" >/dev/null; then
    echo "deepspeed wheel already in $WHEELHOUSE"
else
    sdist=$(mktemp -d)
    "$PY" -m pip download --quiet --no-deps --no-binary :all: -d "$sdist" "$DEEPSPEED" || exit 1
    DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WHEELHOUSE" "$sdist"/deepspeed-*.tar.gz ||
        exit 1
    rm -rf "$sdist"
fi
ls -1 "$WHEELHOUSE"
du -sh "$WHEELHOUSE"
