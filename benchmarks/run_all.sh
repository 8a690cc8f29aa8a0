#!/usr/bin/env bash
# Regenerates every section of benchmarks/RESULTS.md with the canonical settings.
# Run on an otherwise idle machine: timings are compared within one run, but background load
# still adds noise. Needs the original 1.0.0 in .upstream (see docs/benchmarks.md), the
# [onnx] extra for the onnxruntime variant, and `bash scripts/demo.sh` for bench_precision
# (skipped without the demo checkpoint). About 5 hours on 2 cores; each script prints its
# progress and writes its own section when it ends, so an interrupted run keeps what ended.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
run() { echo "== $*"; local start=$SECONDS; "$PY" "$@"; echo "== took $((SECONDS - start)) s"; }

run benchmarks/bench_inference.py --models r18d_c1ds r50d_ppmds r50_upernet \
    --variants ours upstream ours_plain ours_bf16 ours_plan_nchw_onednn ours_plan_nchw_gemm \
    ours_plan_nhwc_onednn ours_plan_nhwc_gemm ours_plan_nchw_torch \
    --images 2 --repeats 3 --threads 1 2
run benchmarks/bench_inference.py --models r50d_ppmds \
    --variants ours ours_compiled ours_onnxruntime upstream \
    --images 2 --repeats 2 --threads 1 2 --section inference_compiled
run benchmarks/bench_memory.py --models r50d_ppmds --variants ours upstream ours_plain \
    --sizes 256 512 1024 2048 --repeats 1 --threads 2
run benchmarks/bench_flops.py --models r50d_ppmds r50_upernet --repeats 1 --threads 1 2
run benchmarks/bench_train.py --models r50d_ppmds r50_upernet r18d_c1ds \
    --variants ours upstream ours_default_malloc ours_plain_heads ours_bf16 --batch 2 \
    --size 384 --steps 3 --warmup 1 --repeats 3 --threads 1 2
run benchmarks/bench_winograd.py --threads 1 2 --repeats 3
run benchmarks/bench_data.py --repeats 5 --steps 30 --images 64 --threads 1
run benchmarks/bench_syncbn.py --replicas 2 --iters 10 --repeats 5 --size 32 --batch 8 \
    --channels 32 --threads 1
# int8 (MODEL.precision int8, the [int8] extra): speed against the original, the two
# quantization routes, and compilation per image size; bench_int8.py stops at once (exit 1,
# one line) on a CPU without int8 units, whose speed the first command still measures
run benchmarks/bench_inference.py --models r18d_c1ds r50d_ppmds r50_upernet \
    --variants ours upstream ours_int8 --images 2 --repeats 3 --threads 1 2 \
    --section inference_int8
run benchmarks/bench_inference.py --models r50d_ppmds \
    --variants ours upstream ours_int8 ours_onnxruntime ours_onnxruntime_int8 \
    --images 2 --repeats 3 --threads 2 --section inference_int8_route
run benchmarks/bench_int8.py --part sizes --models r18d_c1ds r50d_ppmds r50_upernet --threads 2 \
    || echo "== bench_int8 skipped (see above)"
demo=ckpt/synthetic-mobilenetv2dilated-c1_deepsup
if [ -f "$demo/encoder_epoch_5.pth" ]; then
    # the photos part (int8 agreement on real photographs) needs scikit-image
    run benchmarks/bench_precision.py --cfg config/synthetic-mobilenetv2dilated-c1_deepsup.yaml \
        --dir "$demo" --data data/synthetic --repeats 3 --threads 2
    run benchmarks/bench_int8.py --part eval --dir "$demo" --data data/synthetic --repeats 2 \
        --threads 2 || echo "== bench_int8 skipped (see above)"
else
    echo "== bench_precision and bench_int8 --part eval skipped: run bash scripts/demo.sh first"
fi
