#!/usr/bin/env bash
# Every GPU check of the project in one run, for a lent H100/H200 (15 minutes in all):
#   1. install: spidr-hf editable (plus any wheels carried in .whl/: soundfile, fastabx, ...)
#   2. pytest on the GPU: tests/test_gpu.py (reference parity on CUDA, bf16/fp16, padding, compile, the
#      compiled pretraining step through the Triton custom ops without graph break or host sync),
#      tests/test_kernels.py (Triton compiled, not interpreted), tests/test_compile.py,
#      tests/test_evaluation.py (real fastabx)
#   3. benchmarks/gpu_kernels_check.py: kernel correctness per input precision and statistics
#      reduction, fixed block shapes vs autotune, then bench_codebook (eager / compiled torch / ours)
#   4. benchmarks/bench_inference.py --device cuda --dtype bf16: SpidRModel vs HubertModel
#   5. benchmarks/bench_extract.py --device cuda --dtype bf16: extraction vs a plain HuBERT loop,
#      and GPU memory of a one-hour file
#   6. benchmarks/bench_pretrain_step.py: one base pretraining step in each mode (default, eager,
#      compiled with the Triton ops or the torch kernels, regional), by phase
#   7. downstream: a base-size SpidR (fresh weights, or $SPIDR_BASE_DIR) through spidr-hf probe-phones
#      and finetune-ctc on CUDA, on synthetic speech (needs espeak-ng on the machine)
#   8. demo (only when named in STEPS: 8 minutes on its own): `spidr-hf demo --device cuda --scale gpu`,
#      hours of synthetic speech, the demo_gpu recipe for a fixed time, its units against log-mel k-means
#      (results in $OUT/demo/results.json). It needs espeak-ng: when the machine lacks it, carry its Debian
#      packages in .debs/ (apt-get download libespeak-ng1 espeak-ng-data libpcaudio0 libsonic0); the
#      install step unpacks them into /tmp/debs.
# Each step has its own time limit and log ($OUT/NAME.log, or ./gpu-logs); a failed step does not
# stop the next. At the end, one table (benchmarks/session_table.py) sets eager, compiled and the
# package's default path side by side for the step and each kernel, with peak memory, graphs
# compiled, graph breaks and host syncs. SMOKE=1 runs the same steps at toy sizes on a CPU, to test
# this script; STEPS="kernels pretrain" runs only those steps (install always runs). The parity tests
# read the reference fixtures from $SPIDR_FIXTURES (default ./.fixtures: copy ../shared/fixtures
# there, as ../shared does not travel to a lent machine) and skip without them.
#   bash benchmarks/gpu_session.sh                 # on the GPU machine, from the repo root
#   STEPS="compile kernels pretrain" bash benchmarks/gpu_session.sh   # the training-speed checks (issue 13)
#   STEPS=demo bash benchmarks/gpu_session.sh      # the GPU demo alone (issue 19)
#   SMOKE=1 bash benchmarks/gpu_session.sh         # anywhere, a few minutes
set -u
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
rm -f "$OUT"/*.rows.json  # the summary table shows this run only
export PYTHONUNBUFFERED=1 SPIDR_FIXTURES=${SPIDR_FIXTURES:-$PWD/.fixtures}
SMOKE=${SMOKE:-0}
PY=${PYTHON:-python3}

STEPS=${STEPS:-pytest kernels inference extract pretrain downstream}  # "compile": only the GPU test of the compiled step; "demo": the GPU demo

step() {  # step NAME LIMIT_SECONDS COMMAND...: run, log, print the log's tail and the time taken
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    if [ "$name" != install ] && [[ " $STEPS " != *" $name "* ]]; then
        return
    fi
    echo "=== $name (limit ${limit} s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    grep -E "PASS|FAIL|INFO|passed|failed|error|Error|x |audio|ratio|MiB|us |step|default|eager|compile|regional" "$OUT/$name.log" | tail -n "${TAIL:-25}"
    echo "--- $name: exit $rc after $((SECONDS - start)) s"
}

if [ "$SMOKE" != 1 ]; then  # SMOKE=1 uses the developer's environment (make test's .venv) as it is
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # carried wheels (Python 3.12) go to /tmp/site; spidr-hf itself installs editable, as in development
    step install 120 bash -c "set -e
        if ls .whl/*.whl >/dev/null 2>&1; then
            $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
        fi
        export PYTHONPATH=/tmp/site  # a carried setuptools >= 77 builds the editable install
        $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || {
            echo 'editable install failed: copying the package into /tmp/site instead'
            cp -r spidr_hf /tmp/site/ && cp -r modeling /tmp/site/spidr_hf/ && cp -r training /tmp/site/spidr_hf/
        }"
    export PYTHONPATH=/tmp/site
fi
if ls .debs/*.deb >/dev/null 2>&1; then  # espeak-ng for the demo, unpacked without root (see step 7)
    for deb in .debs/*.deb; do dpkg-deb -x "$deb" /tmp/debs; done
    export LD_LIBRARY_PATH=/tmp/debs/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export ESPEAK_DATA_PATH=/tmp/debs/usr/lib/x86_64-linux-gnu  # the folder that holds espeak-ng-data
fi
$PY -c 'import spidr_hf, torch, transformers, triton, accelerate
print("spidr_hf", spidr_hf.__file__, "torch", torch.__version__, "transformers", transformers.__version__,
      "triton", triton.__version__, "accelerate", accelerate.__version__, "cuda", torch.cuda.is_available())'

step pytest 240 $PY -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py tests/test_kernels.py \
    tests/test_compile.py tests/test_evaluation.py tests/test_parity.py

step compile 120 $PY -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py -k compiled_pretraining_step

STEP_MODES=default,eager,compile,compile-torch,regional
if [ "$SMOKE" = 1 ]; then
    step kernels 300 $PY benchmarks/gpu_kernels_check.py --cpu-smoke --rows "$OUT/2-kernels.rows.json"
    step inference 120 $PY benchmarks/bench_inference.py --repeats 2 --seconds 1
    step extract 300 $PY benchmarks/bench_extract.py --small --files 4 --repeats 1 --long-minutes 1
    step pretrain 300 $PY benchmarks/bench_pretrain_step.py --small --batch 2 --seconds 2 --steps 1 \
        --masks 2 --modes $STEP_MODES --compile-backend aot_eager --rows "$OUT/1-step.rows.json"
    step demo 900 $PY -m spidr_hf.cli demo --scale gpu --device cpu --smoke --output-dir "$OUT/demo"
else
    step kernels 200 $PY benchmarks/gpu_kernels_check.py --rows "$OUT/2-kernels.rows.json"
    step inference 90 bash -c "$PY benchmarks/bench_inference.py --device cuda --dtype bf16 --batch-size 8 \
        --seconds 15 --repeats 20 --warmup 3 && $PY benchmarks/bench_inference.py --device cuda --dtype fp32 \
        --batch-size 8 --seconds 15 --repeats 10 --warmup 2"
    step extract 150 $PY benchmarks/bench_extract.py --device cuda --dtype bf16 --files 200 --repeats 2 \
        --num-workers 8 --long-minutes 60
    # two masks: the second masked count recompiles once (counted in the table's "graphs")
    step pretrain 400 $PY benchmarks/bench_pretrain_step.py --masks 2 --modes $STEP_MODES \
        --rows "$OUT/1-step.rows.json"
    # 8 minutes by design (rendering, a 300 s pretraining budget, scoring); the limit leaves 1 minute over
    step demo 540 $PY -m spidr_hf.cli demo --scale gpu --device cuda --output-dir "$OUT/demo"
fi

# a base-size encoder: $SPIDR_BASE_DIR (e.g. a converted official checkpoint), else fresh weights
DOWN=$OUT/downstream
if [ "$SMOKE" = 1 ]; then DOWN_MIN=0.3; DOWN_STEPS=20; DOWN_CONFIG="SpidRConfig.tiny()"; else
    DOWN_MIN=10; DOWN_STEPS=1000; DOWN_CONFIG="SpidRConfig()"; fi
step downstream 500 bash -c "set -e
    rm -rf $DOWN && mkdir -p $DOWN
    $PY -m spidr_hf.cli synth-corpus $DOWN/train --minutes $DOWN_MIN --seed 0 --quiet
    $PY -m spidr_hf.cli synth-corpus $DOWN/test --minutes \$($PY -c 'print($DOWN_MIN / 3)') --seed 1 --quiet
    MODEL=\${SPIDR_BASE_DIR:-$DOWN/model}
    [ -n \"\${SPIDR_BASE_DIR:-}\" ] || $PY -c 'import torch; from spidr_hf import SpidRConfig, SpidRForPreTraining
from spidr_hf.model_dir import save_pretrained_with_code
torch.manual_seed(0); save_pretrained_with_code(SpidRForPreTraining($DOWN_CONFIG), \"$DOWN/model\")'
    $PY -m spidr_hf.cli probe-phones \$MODEL $DOWN/train $DOWN/test --output-dir $DOWN/probe --steps $DOWN_STEPS --quiet
    $PY -m spidr_hf.cli finetune-ctc \$MODEL $DOWN/train --test-corpus $DOWN/test --output-dir $DOWN/ctc --max-steps $DOWN_STEPS --quiet"

if [[ " $STEPS " == *" demo "* ]] && [ -f "$OUT/demo.log" ]; then
    sed -n '/^Units on/,$p' "$OUT/demo.log"  # the demo's table and closing lines
fi
echo "=== summary: eager / compiled / default path (x: default vs compiled, above 1 = default faster)"
$PY benchmarks/session_table.py "$OUT"
