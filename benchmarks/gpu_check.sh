#!/usr/bin/env bash
# The checks that need a GPU, in one go: the selection and training tests on CUDA, then the
# full-pool method comparison with finetuning on the GPU.
#
#   benchmarks/gpu_check.sh OUT_DIR [FASHION_MNIST_DIR]
#
# Each step has its own time limit (TEST_SECONDS, COMPARE_SECONDS, FINETUNE_SECONDS) and its own
# log under OUT_DIR, so a slow step costs only itself; the comparison's CSV is saved run by run.
set -u
out=${1:?usage: gpu_check.sh OUT_DIR [FASHION_MNIST_DIR]}
root=${2:-}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg
mkdir -p "$out"
started=$(date +%s)
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "cpus: $(nproc)"
  "$py" -c "import torch, timm, numpy, sklearn; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'timm', timm.__version__, 'numpy', numpy.__version__, 'sklearn', sklearn.__version__)"
} >"$out/env.txt" 2>&1

timeout "${TEST_SECONDS:-70}" "$py" -m pytest tests/bilaf/selection tests/bilaf/training -q -m "not heavy" \
  -p no:cacheprovider >"$out/pytest.log" 2>&1
echo "pytest exit $? after $(($(date +%s) - started)) s" >>"$out/env.txt"

timeout "${COMPARE_SECONDS:-450}" "$py" benchmarks/compare_methods.py ${root:+--source-root "$root"} \
  --workdir /tmp/compare --out "$out/compare" --jobs 12 --workers 8 \
  --finetune Random ActiveFT "BiLAF (default)" --finetune-seconds "${FINETUNE_SECONDS:-200}" \
  >"$out/compare.log" 2>&1
echo "compare exit $? after $(($(date +%s) - started)) s" >>"$out/env.txt"
