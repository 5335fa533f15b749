#!/usr/bin/env bash
# Set up the python environment of benchmarks/gpu_check.sh on a bare machine.
#
#   bash benchmarks/gpu/setup_env.sh [--help]
#
# 1. A virtual environment at $GPU_CHECK_VENV (default .gpu-venv), made with
#    --system-site-packages so that a CUDA torch and Triton already installed with
#    $PYTHON (default python3) are used as they are; if $PYTHON is itself in a venv,
#    a .pth file adds that venv's site-packages.
# 2. torch: only if that environment cannot import it, `pip install "$TORCH_SPEC"`
#    (default `torch`: on Linux PyPI's default torch wheel is a CUDA build; pin one
#    with e.g. TORCH_SPEC='torch==2.11.0').
# 3. The requirements of setup.py (and triton) that are not yet satisfied
#    (benchmarks/gpu/requirements.py --missing). With a wheel folder at $WHEELHOUSE
#    (default .whl, filled by benchmarks/gpu/fetch_wheels.sh on a machine with PyPI)
#    they come from there with --no-index, for machines without network; those it has
#    no wheel for are listed and left out. Without one they come from the index.
# 4. ctal-ds itself, editable, without dependencies (pip install --no-deps -e .).
#
# Each step prints its elapsed time; what is already present is skipped. Exit status
# 0 when what the training probes need imports (deepspeed, webdataset, soundfile,
# librosa, tokenizers), else 1. MLflow and espeakng-loader are optional here: without
# MLflow a run logs to <out>/metrics.jsonl only, without espeakng-loader the shards
# are built from synthetic audio.
set -u -o pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 1
BASE_PY=${PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-$REPO/.gpu-venv}
WHEELHOUSE=${WHEELHOUSE:-$REPO/.whl}
TORCH_SPEC=${TORCH_SPEC:-torch}
VPY=$VENV/bin/python
# No network: fail fast instead of pip's default retries.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_RETRIES=${PIP_RETRIES:-1} PIP_TIMEOUT=${PIP_TIMEOUT:-15}
start=$SECONDS

step() { echo "[setup +$((SECONDS - start))s] $*"; }

have_wheels() { compgen -G "$WHEELHOUSE/*.whl" >/dev/null; }

pip_install() {
    if have_wheels; then
        "$VPY" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" --no-build-isolation "$@"
    else
        "$VPY" -m pip install --quiet "$@"
    fi
}

# A requirement's distribution name, as wheel file names spell it (lower case, '_').
wheel_name() { local name=${1%%[<>=!~ ;\[]*}; name=${name,,}; echo "${name//-/_}"; }

if [[ -x $VPY ]]; then
    step "venv $VENV exists"
else
    step "creating venv $VENV from $BASE_PY (with its site-packages)"
    if ! "$BASE_PY" -m venv --system-site-packages "$VENV"; then
        # No ensurepip (e.g. Debian's python without python3-venv): a venv without its
        # own pip, which then runs the pip of $PYTHON's site-packages.
        rm -rf "$VENV"
        "$BASE_PY" -m venv --system-site-packages --without-pip "$VENV" || exit 1
        step "venv made without pip: pip comes from $BASE_PY's site-packages"
    fi
    # A venv made from a venv's python sees only the base interpreter's site-packages;
    # a .pth file adds the parent venv's (after the new venv's own, which win).
    parent_sites=$("$BASE_PY" -c 'import sys
if sys.prefix != sys.base_prefix:
    print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))')
    if [[ -n $parent_sites ]]; then
        venv_site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        printf '%s\n' "$parent_sites" >"$venv_site/_gpu_check_parent_venv.pth"
        step "$BASE_PY is in a venv: its site-packages added to $VENV (${parent_sites//$'\n'/, })"
    fi
fi

if "$VPY" -c "import torch" 2>/dev/null; then
    step "torch present: $("$VPY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
else
    step "installing torch ($TORCH_SPEC)"
    pip_install "$TORCH_SPEC" || { step "torch install failed"; exit 1; }
fi

read -r -a missing <<<"$("$VPY" benchmarks/gpu/requirements.py --missing)"
wanted=()
for req in "${missing[@]}"; do
    [[ $(wheel_name "$req") == torch ]] && continue
    wanted+=("$req")
done
if ((${#wanted[@]} == 0)); then
    step "all requirements satisfied"
else
    if have_wheels; then
        offline=() absent=()
        for req in "${wanted[@]}"; do
            if compgen -G "$WHEELHOUSE/$(wheel_name "$req")-*.whl" >/dev/null; then
                offline+=("$req")
            else
                absent+=("$req")
            fi
        done
        ((${#absent[@]})) && step "no wheel in $WHEELHOUSE for: ${absent[*]} (left out)"
        wanted=("${offline[@]}")
    fi
    if ((${#wanted[@]})); then
        step "installing ${wanted[*]}"
        if ! pip_install "${wanted[@]}"; then
            step "one install failed; trying each requirement alone"
            for req in "${wanted[@]}"; do
                pip_install "$req" || step "could not install $req"
            done
        fi
    fi
fi

if "$VPY" -m pip show ctal-ds >/dev/null 2>&1; then
    step "ctal-ds already installed"
else
    step "installing ctal-ds (editable, no dependencies)"
    "$VPY" -m pip install --quiet --no-deps --no-build-isolation --no-index -e . ||
        step "editable install failed; the probes put the repository on PYTHONPATH anyway"
fi

"$VPY" benchmarks/gpu/requirements.py
step "done"
"$VPY" -c "import deepspeed, webdataset, soundfile, librosa, tokenizers" || {
    step "the training probes cannot run: a package above is missing"
    exit 1
}
