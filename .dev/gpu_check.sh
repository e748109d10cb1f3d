#!/bin/bash
# One prepared device check (see README of the device tool): paper-preset throughput/MFU on one GPU,
# the shared/reference schedule ratio on GPU, and the CUDA paths of the engine (bf16, fp16 + GradScaler, resume).
# Needs two folders kept out of git (.git/info/exclude) and passed as `carry`:
#   .whl/      datasets==5.2.0, dill==0.4.1, multiprocess==0.70.19 wheels for cp312 (the device image lacks them)
#   .gpucache/ SCL_NB_CACHE with tokenizers/tiny-bpe-50265 and bench/captions.jsonl + bench/images/
#              (320 synthetic images at 288 px: make_synthetic for `load_config("paper", ["text.tokenizer=tiny-bpe"])`,
#              then a manifest of the first 320 image ids; the whole set is 195 MB, over the 64 MiB carry limit)
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD SCL_NB_CACHE=$PWD/.gpucache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a $OUT/gpu.txt
B="vision.pretrained=null text.pretrained=null text.tokenizer=tiny-bpe data.source=.gpucache/bench/captions.jsonl data.num_workers=8"  # random towers: the engine now loads the towers a config names
for b in 32 64 128; do echo "== paper bf16 batch $b eager"; timeout 120 python3 -m scl_nb.tools.bench train --preset paper --steps 8 train.batch_size=$b train.per_gpu_batch_size=$b $B 2>&1 | tee $OUT/paper_eager$b.txt | grep -v Warn | tail -2; done
echo "== pretrain-step shared vs reference, paper, batch 32"; timeout 150 python3 -m scl_nb.tools.bench pretrain-step --preset paper --steps 5 text.tokenizer=tiny-bpe 2>&1 | tee $OUT/pretrain_step.txt | grep -v Warn | tail -6
echo "== tiny on cuda fp16 (GradScaler), kill-free resume"; (timeout 60 python3 -m scl_nb.train --preset tiny --data .gpucache/bench/captions.jsonl --steps 30 --out /tmp/t16 train.precision=fp16 train.ckpt_every=15 && timeout 60 python3 -m scl_nb.train --preset tiny --data .gpucache/bench/captions.jsonl --steps 40 --out /tmp/t16 --resume train.precision=fp16 && tail -2 /tmp/t16/metrics.jsonl) 2>&1 | grep -v Warn | tail -6
S="data.static_shapes=true train.compile=true train.compile_mode=reduce-overhead"  # whole-step compile, CUDA graphs
for b in 64 128; do echo "== paper bf16 batch $b compiled ($S)"; timeout 200 python3 -m scl_nb.tools.bench train --preset paper --steps 12 train.batch_size=$b train.per_gpu_batch_size=$b $S $B 2>&1 | tee $OUT/paper_compile$b.txt | grep -v Warn | tail -2; done
echo "== best batch, compiled"; timeout 300 python3 -m scl_nb.tools.bench best-batch --preset paper --steps 6 --sizes 128 192 256 $S $B 2>&1 | tee $OUT/best_batch.txt | grep -v Warn | tail -5
# the timeouts add up to more than one 600-s call: run the eager half and the compiled half as two calls
