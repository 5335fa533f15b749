#!/usr/bin/env bash
# One GPU check of ctal-ds: kernel correctness, attention speed, and short ZeRO-2
# pre-training runs, in under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [--help]
#
# Without a GPU (torch.cuda.is_available() false and no GPU in nvidia-smi) it prints
# "not run: no GPU available" and what it would run, and exits 0.
#
# Probes, each in its own process under `timeout` (a crash or hang ends that probe
# only). env and setup run first; then shards and fused_adam side by side in the
# background while the kernel correctness probe runs; then the others one after another:
#
#   env          versions and machine (benchmarks/gpu/env_report.py)
#   setup        venv, missing packages, ctal-ds (benchmarks/gpu/setup_env.sh)
#   kernel       fused attention vs an fp64 reference (benchmarks/gpu/attention_correctness.py)
#   shards       a pre-training shard set from the demo corpus (benchmarks/gpu/make_shards.py)
#   fused_adam   JIT build of DeepSpeed's FusedAdam (benchmarks/gpu/fused_adam_build.py)
#   speed        fused vs SDPA vs FlexAttention (benchmarks/gpu/attention_speed.py)
#   train_bf16   base preset, ZeRO-2, bf16, deepspeed launcher, 1 GPU (benchmarks/gpu/train_probe.py)
#   train_fp16   the same in fp16 with dynamic loss scaling
#
# At the end a table gives each probe's status (ok, FAILED, timeout, skipped) and
# time; the exit status is 1 unless every probe is ok. The whole check stops starting
# probes once GPU_CHECK_BUDGET_S (default 460) seconds have passed, and cuts each
# probe's limit to what is left, so it ends within that budget plus ~15 s.
#
# Environment:
#   PYTHON            python with a CUDA torch and Triton, the venv's base (default python3)
#   GPU_CHECK_VENV    venv of every probe but env (default .gpu-venv; kernel and speed
#                     run with $PYTHON if the setup fails)
#   TORCH_SPEC        torch to install if that venv cannot import one (default torch)
#   WHEELHOUSE        wheels to install from offline (default .whl; benchmarks/gpu/fetch_wheels.sh)
#   GPU_CHECK_WORK    shards and training runs (default runs/gpu_check)
#   GPU_CHECK_OUT     log, summary and JSON results (default $OUT if set, else runs/gpu_check/logs)
#   GPU_CHECK_BUDGET_S  seconds for the whole check (default 460)
#   GPU_CHECK_STEPS   optimizer steps per training probe (default 80)
# For testing this script itself (tests/benchmarks/test_gpu_check.py):
#   GPU_CHECK_ASSUME_GPU=1       take the GPU path without a GPU
#   GPU_CHECK_RUN_<probe>=CMD    run `bash -c CMD` instead of the probe (e.g. GPU_CHECK_RUN_speed)
#   GPU_CHECK_LIMIT_<probe>=S    that probe's limit in seconds
set -u -o pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
BASE_PY=${PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-$REPO/.gpu-venv}
WORK=${GPU_CHECK_WORK:-$REPO/runs/gpu_check}
LOGS=${GPU_CHECK_OUT:-${OUT:-$WORK/logs}}
BUDGET_S=${GPU_CHECK_BUDGET_S:-460}
STEPS=${GPU_CHECK_STEPS:-80}
# A probe is not started with less than this many seconds of the budget left.
MIN_PROBE_S=15
PROBES=(env setup kernel shards fused_adam speed train_bf16 train_fp16)
LIMITS=(30 150 150 150 120 120 100 100)
export GPU_CHECK_VENV=$VENV PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$REPO/.cache/torch_extensions}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

now() { printf '%(%s)T' -1; }
START=$(now)
DEADLINE=$((START + BUDGET_S))
elapsed() { echo $(($(now) - START)); }

limit_of() {
    local i override="GPU_CHECK_LIMIT_$1"
    if [[ -n ${!override:-} ]]; then
        echo "${!override}"
        return
    fi
    for i in "${!PROBES[@]}"; do
        [[ ${PROBES[$i]} == "$1" ]] && echo "${LIMITS[$i]}" && return
    done
    echo 60
}

# What each probe runs, given the pythons and folders (printed in the plan, and run).
VPY=$VENV/bin/python
# The python of the kernel and speed probes: the venv's once setup has passed (the
# package imports modules that need its requirements), else $PYTHON.
PROBE_PY=$VPY
JOBS=$(($(nproc) > 4 ? $(nproc) - 2 : 2))  # shard workers: all but two CPUs
probe_command() {
    case $1 in
    env) echo "$BASE_PY benchmarks/gpu/env_report.py --json $LOGS/env.json" ;;
    kernel) echo "$PROBE_PY benchmarks/gpu/attention_correctness.py --json $LOGS/kernel.json" ;;
    setup) echo "bash benchmarks/gpu/setup_env.sh" ;;
    shards) echo "$VPY benchmarks/gpu/make_shards.py --out $WORK/data --workers $JOBS" ;;
    fused_adam) echo "$VPY benchmarks/gpu/fused_adam_build.py" ;;
    speed) echo "$PROBE_PY benchmarks/gpu/attention_speed.py --json $LOGS/speed.json" ;;
    train_bf16 | train_fp16)
        local precision=${1#train_}
        echo "$VPY benchmarks/gpu/train_probe.py --precision $precision --shards $WORK/data/shards" \
            "--out $WORK/$1 --steps $STEPS --num-workers $((JOBS > 6 ? 6 : JOBS)) --json $LOGS/$1.json"
        ;;
    esac
}

# run_named NAME [ARGS...]: run_probe with the probe's command (or its override) and ARGS.
run_named() {
    local name=$1 override="GPU_CHECK_RUN_$1" cmd
    shift
    if [[ -n ${!override:-} ]]; then
        cmd=(bash -c "${!override}" "$name")
    else
        read -r -a cmd <<<"$(probe_command "$name")"
    fi
    run_probe "$name" "${cmd[@]}" "$@"
}

have_cuda() {
    [[ ${GPU_CHECK_ASSUME_GPU:-0} == 1 ]] && return 0
    "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}
smi_sees_gpu() { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }

print_plan() {
    local name
    echo "${1:-Plan}, each probe under timeout, within ${BUDGET_S} s in all:"
    for name in "${PROBES[@]}"; do
        printf '  %-11s (limit %3s s)  %s\n' "$name" "$(limit_of "$name")" "$(probe_command "$name")"
    done
}

# run_probe NAME COMMAND...: run under timeout within the budget, record the outcome.
run_probe() {
    local name=$1
    shift
    local limit left t0 rc status
    limit=$(limit_of "$name")
    left=$((DEADLINE - $(now)))
    if ((left < MIN_PROBE_S)); then
        record "$name" skipped 0 "time budget spent"
        echo "=== [$name] skipped: ${left} s of the budget left"
        return 1
    fi
    ((limit > left)) && limit=$left
    echo "=== [$name] start at +$(elapsed) s, limit $limit s: $*"
    t0=$(now)
    timeout --kill-after=10 "$limit" "$@" </dev/null
    rc=$?
    case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=FAILED ;;
    esac
    record "$name" "$status" $(($(now) - t0)) "exit $rc${PROBE_NOTE:+; $PROBE_NOTE}"
    echo "=== [$name] $status (exit $rc) in $(($(now) - t0)) s; +$(elapsed) s since the start"
    return $rc
}

record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$STATE/results.tsv"; }
status_of() { awk -F'\t' -v n="$1" '$1 == n { s = $2 } END { print s }' "$STATE/results.tsv"; }
skip() { record "$1" skipped 0 "$2"; echo "=== [$1] skipped: $2"; }

# The background part: the shards and the FusedAdam build side by side (CPU work),
# each into its own log, printed in turn.
prepare() {
    if [[ $(status_of setup) == ok ]]; then
        run_named shards >"$STATE/shards.log" 2>&1 &
        run_named fused_adam >"$STATE/fused_adam.log" 2>&1
        wait
        cat "$STATE/shards.log" "$STATE/fused_adam.log"
    else
        skip shards "setup failed"
        skip fused_adam "setup failed"
    fi
}

train() {
    local name=$1 extra=()
    if [[ $(status_of shards) != ok ]]; then
        skip "$name" "no shards"
        return
    fi
    if [[ $(status_of fused_adam) != ok ]]; then
        echo "=== [$name] FusedAdam did not build: this run uses torch's AdamW (--optimizer torch_adam)"
        extra=(--optimizer torch_adam)
        PROBE_NOTE="torch AdamW, FusedAdam did not build"
    fi
    run_named "$name" "${extra[@]}"
    PROBE_NOTE=
}

summary() {
    local name status secs note failed=0
    echo
    echo "gpu_check summary ($(elapsed) s in all, budget $BUDGET_S s):"
    printf '%-11s  %-8s  %6s  %s\n' probe status seconds note
    printf '%-11s  %-8s  %6s  %s\n' ----------- -------- ------- ----
    for name in "${PROBES[@]}"; do
        IFS=$'\t' read -r _ status secs note < <(awk -F'\t' -v n="$name" '$1 == n { l = $0 } END { print l }' \
            "$STATE/results.tsv")
        status=${status:-"not run"}
        printf '%-11s  %-8s  %6s  %s\n' "$name" "$status" "${secs:--}" "${note:-}"
        printf '%s\t%s\t%s\t%s\n' "$name" "$status" "${secs:--}" "${note:-}" >>"$LOGS/summary.tsv"
        [[ $status == ok ]] || failed=1
    done
    if ((failed)); then
        echo "gpu_check: not every probe passed (logs: $LOGS/gpu_check.log)"
    else
        echo "gpu_check: every probe passed"
    fi
    return $failed
}

main() {
    echo "gpu_check of ctal-ds at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC')"
    local bare=0
    if ! have_cuda "$BASE_PY"; then
        if smi_sees_gpu; then
            echo "nvidia-smi lists a GPU that $BASE_PY's torch cannot use: setting up $VENV first"
            bare=1
        else
            "$BASE_PY" benchmarks/gpu/env_report.py 2>/dev/null || echo "($BASE_PY could not run env_report.py)"
            echo
            echo "not run: no GPU available"
            print_plan "It would run"
            return 0
        fi
    fi
    mkdir -p "$LOGS" "$WORK"
    STATE=$(mktemp -d)
    : >"$STATE/results.tsv"
    : >"$LOGS/summary.tsv"
    if ((bare)); then
        run_named setup
        BASE_PY=$VPY
        have_cuda "$VPY" || echo "torch in $VENV cannot use the GPU either"
    fi
    # The versions and the machine first.
    run_named env
    [[ -n $(status_of setup) ]] || run_named setup
    if [[ $(status_of setup) != ok ]]; then
        PROBE_PY=$BASE_PY
        echo "=== setup failed: the kernel and speed probes run with $BASE_PY"
    fi
    if [[ -z ${TORCH_CUDA_ARCH_LIST:-} ]]; then
        TORCH_CUDA_ARCH_LIST=$("$PROBE_PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null) &&
            export TORCH_CUDA_ARCH_LIST
    fi
    print_plan
    prepare >"$STATE/prepare.log" 2>&1 &
    local prepare_pid=$!
    run_named kernel
    echo "=== waiting for shards/fused_adam (background, log follows)"
    wait "$prepare_pid"
    cat "$STATE/prepare.log"
    run_named speed
    train train_bf16
    train train_fp16
    summary
}

mkdir -p "$LOGS" 2>/dev/null || true
if [[ -d $LOGS && -w $LOGS ]]; then
    main 2>&1 | tee "$LOGS/gpu_check.log"
else
    main 2>&1
fi
exit "${PIPESTATUS[0]}"
