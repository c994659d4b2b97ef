#!/bin/bash
# The GPU check, one script for a lent GPU machine with no network (see benchmarks/gpu/README.md).
# Needs, beside the checkout: WHEELS (pydantic, pydantic-core, annotated-types, typing-inspection, torchattacks
# for Python 3.12) and FMNIST (the four gzipped IDX files). Writes its logs and reports to OUT.
# Ray (an 80 MB wheel) and W&B are not there: nodes run with `--executor local`, W&B disabled.
WHEELS=${WHEELS:-.devrun/whl} FMNIST=${FMNIST:-$PWD/.devrun/fmnist} OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD WANDB_MODE=disabled PYTHONUNBUFFERED=1
took() { echo "$1 rc=$2 wall=$(( $(date +%s) - $3 )) s"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo "cores: $(nproc)"
  python3 -c "import torch, pydantic; print('torch', torch.__version__, 'pydantic', pydantic.__version__)"; } > "$OUT/demo.log" 2>&1
# 1. the demo sweep on the GPU
s=$(date +%s)
timeout 150 python3 -m sweeper run search_spaces/fmnist_demo.yaml --executor local --store /tmp/st \
  --set data.root="$FMNIST" --wandb disabled >> "$OUT/demo.log" 2>&1
took demo $? $s | tee -a "$OUT/demo.log"
cp /tmp/st/reports/fmnist_demo/report.md "$OUT/demo_report.md"
# 2. throughput and the single-GPU projection of the paper-scale sweeps
s=$(date +%s)
timeout 120 python3 benchmarks/bench_gpu.py --results "$OUT" > "$OUT/bench_gpu.log" 2>&1
took bench $? $s | tee -a "$OUT/bench_gpu.log"
# 3. every node kind on the GPU, on self-made CIFAR-format files (the path, not CIFAR numbers)
python3 benchmarks/gpu/make_cifar.py /tmp/cifar 2000
s=$(date +%s)
timeout 100 python3 benchmarks/gpu/run_sweeper.py run benchmarks/gpu/cifar_gpu_path.yaml --executor local \
  --store /tmp/cg --wandb disabled > "$OUT/cifar_path.log" 2>&1
took "cifar path" $? $s | tee -a "$OUT/cifar_path.log"
cp /tmp/cg/reports/cifar_gpu_path/report.md "$OUT/cifar_path_report.md"
# 4. the demo's evaluations again with torchattacks' full AutoAttack beside PGD and APGD-T
s=$(date +%s)
timeout 150 python3 -m sweeper run search_spaces/fmnist_demo.yaml --executor local --store /tmp/st --no-report \
  --set data.root="$FMNIST" --wandb disabled --set "stages.eval.attacks=$(python3 -c \
  'import sys; sys.path.insert(0, "benchmarks/gpu"); import aa_compare; print(aa_compare.ATTACKS)')" > "$OUT/aa.log" 2>&1
took autoattack $? $s | tee -a "$OUT/aa.log"
python3 benchmarks/gpu/aa_compare.py /tmp/st "$FMNIST" >> "$OUT/aa.log" 2>&1
tail -3 "$OUT/demo.log" "$OUT/bench_gpu.log" "$OUT/cifar_path.log"; tail -14 "$OUT/aa.log"
