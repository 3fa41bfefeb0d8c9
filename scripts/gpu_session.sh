#!/usr/bin/env bash
# One GPU session's measurements (issue 26), in order of value; each stage writes its JSON, table and
# log into OUTDIR as it ends, so a session cut short keeps the stages it finished:
#   1 sampler   the sampling step alone (bench_sampler.py): vLLM unseeded, vLLM seeded, s2-vllm's
#               SeededSampler, at Qwen3's vocabulary (151,936) and the stand-in's (2,565)
#   2 seeds     bench.py plain, plain-unseeded, s2 with --repeat 2 (alternating trials)
#   3 rest      bench.py s2-own-sampler (s2-vllm's SeededSampler on CUDA), s2-noprefix, s2-thinking, hf
#   4 describe  bench_describe.py describe, plain, vllm-per-clip on Qwen2.5-Omni-7B's thinker shape,
#               if OMNI (default .bench/omni-7b-shape) is there when the stage starts (.whl-audio: installed first)
#   5 video     bench_describe.py --modality video, the same modes on Qwen2.5-VL-7B's shape (VL, default
#               .bench/vl-7b-shape, written by s2_vllm.tiny_vl.write_vl_7b_config), 32 frames of 448 x 448
#
#   bash scripts/gpu_session.sh OUTDIR           # on the GPU node (docs/BENCHMARKS.md, "Plan for a session with a GPU")
#   bash scripts/gpu_session.sh OUTDIR --cpu     # the same stages on vLLM's CPU build at tiny sizes (a dry run)
set -u
out=${1:?usage: gpu_session.sh OUTDIR [--cpu]}
cd "$(dirname "$0")/.."
mkdir -p "$out"
work=${WORK:-/tmp/s2-gpu-session}
omni=${OMNI:-.bench/omni-7b-shape}
vl=${VL:-.bench/vl-7b-shape}
if [ "${2:-}" = --cpu ]; then
    device=cpu; bench=(--device cpu --tiny --records 48 --max-tokens 16 --thinking-records 8 --thinking-tokens 32
                       --hf-records 8); sampler=(--batches 32 --vocabs 2565 --steps 3)
    describe=(--clips 8 --per-clip-clips 4 --max-tokens 16 --modes describe,plain,vllm-per-clip --host-clips 8)
    video=(--clips 8 --per-clip-clips 4 --max-tokens 16 --modes describe,plain,vllm-per-clip --host-clips 0)
else
    device=cuda; bench=(--records 1000 --max-tokens 300 --mode-timeout 240 --thinking-records 250 --hf-records 32)
    sampler=(--batches 64,256,512,1024 --vocabs 2565,151936)
    describe=(--model "$omni" --load-format dummy --clips 256 --per-clip-clips 16 --max-tokens 300
              --modes describe,plain,vllm-per-clip --host-clips 32)
    video=(--stand-in vl-7b --model "$vl" --load-format dummy --clips 256 --per-clip-clips 16 --max-tokens 300
           --modes describe,plain,vllm-per-clip --host-clips 0)
fi

stage() {  # stage NAME COMMAND...: COMMAND's output in OUTDIR/NAME.log, its exit status in OUTDIR/NAME.exit
    local name=$1 start=$SECONDS
    shift
    echo "== $name: $*"
    "$@" >"$out/$name.log" 2>&1
    echo $? >"$out/$name.exit"
    echo "   $name: exit $(cat "$out/$name.exit") after $((SECONDS - start)) s"
}

stage sampler python3 scripts/bench_sampler.py --device "$device" "${sampler[@]}" --out "$out/sampler.json"
stage seeds python3 scripts/bench.py "${bench[@]}" --modes plain,plain-unseeded,s2 --repeat 2 \
    --workdir "$work/seeds" --out "$out/seeds.json"
stage rest python3 scripts/bench.py "${bench[@]}" --modes s2-own-sampler,s2-noprefix,s2-thinking,hf \
    --workdir "$work/rest" --out "$out/rest.json"
if [ -d .whl-audio ]; then  # the decoders' wheels, carried by a later call than the kit (docs/BENCHMARKS.md)
    python3 -m pip install -q --no-index --no-deps --target "${SITE:-/tmp/site}" .whl-audio/*.whl
fi
if [ "$device" = cpu ] || [ -d "$omni" ]; then
    stage describe python3 scripts/bench_describe.py "${describe[@]}" --workdir "$work/describe" \
        --out "$out/describe.json"
else
    echo "== describe: skipped, no $omni"
fi
if [ "$device" = cpu ] || [ -d "$vl" ]; then
    stage video python3 scripts/bench_describe.py --modality video "${video[@]}" --workdir "$work/video" \
        --out "$out/video.json"
else
    echo "== video: skipped, no $vl"
fi
echo "== done"
