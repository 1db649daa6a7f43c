#!/usr/bin/env bash
# One GPU round for the bundled world: the VAE fine-tuned on every emoji the font draws except the held-out
# concepts (the shipped encoder turns the octopus's coral yellow-green: docs/WORLD.md), then the shipped UNet
# continued on the new VAE's latents, half of its scenes from that broad pool and half of them holding two
# emoji (the shipped base draws one of two named objects twice: docs/BENCHMARKS.md). About 8 minutes in one call on
# an H200 (render ~1 min, VAE $VAE_S s, UNet $UNET_S s); back come the two swapped folders of the pipeline.
#
#   bash scripts/world_gpu.sh --prepare    # here, once: the wheels (scripts/gpu_check.sh's), the font into .font/
#   bash scripts/world_gpu.sh --dry-run    # here: the whole path on the CPU at toy sizes (~2 min)
#   device run: command "bash scripts/world_gpu.sh", carry ["wheels", ".font"], timeout_s 600
#   then here:  cp -r <files_at>/vae <files_at>/unet runs/world-gpu/  and  python -m lifelong.world.evaluate …
#
# On the device machine PyTorch, transformers, safetensors and Pillow are installed; diffusers is not.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  bash scripts/gpu_check.sh --download
  mkdir -p .font && cp /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf .font/
  du -sh wheels .font
  exit 0
fi

if [ "${1:-}" = "--dry-run" ]; then
  DEVICE=cpu N=512 WORKERS=2 BATCH=8 VAE_S=10 UNET_S=10 WORK=runs/world-gpu-dry OUT=runs/world-gpu-dry/out
else
  DEVICE=cuda N=${N:-200000} WORKERS=$(nproc) BATCH=256 VAE_S=${VAE_S:-120} UNET_S=${UNET_S:-270} WORK=/tmp/world
  if ! python3 -c "import diffusers" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site wheels/*.whl
    export PYTHONPATH=/tmp/site
  fi
  [ -e .font/NotoColorEmoji.ttf ] && export LIFELONG_EMOJI_FONT="$PWD/.font/NotoColorEmoji.ttf"
fi
export PYTHONUNBUFFERED=1
PY=$(command -v python3 || command -v python)
OUT=${OUT:?the device tool sets OUT}
mkdir -p "$WORK" "$OUT"
log="$OUT/log.txt"
began=$(date +%s)
stamp() { echo "[$(( $(date +%s) - began )) s] $*" | tee -a "$log"; }

stamp "render $N scenes, half from the broad pool, half with two emoji, $WORKERS workers"
$PY -m lifelong.world.data --out "$WORK/data" --n "$N" --workers "$WORKERS" --broad 0.5 --pairs 0.5 2>&1 | tail -3 | tee -a "$log"

stamp "VAE: encoder and decoder from the shipped one, $VAE_S s"
$PY -m lifelong.world.train_vae --init assets/base-model/vae --data "$WORK/data" --out "$WORK/vae" \
  --device "$DEVICE" --batch "$BATCH" --lr 2e-4 --steps 1000000 --budget-s "$VAE_S" --save-every 1000000 \
  --threads 2 2>&1 | grep -E "params|psnr|scaling|saved to|Error" | tee -a "$log"

stamp "UNet: the shipped one continued on the new latents, $UNET_S s"
$PY -m lifelong.world.train_unet --init assets/base-model/unet --vae "$WORK/vae/final" \
  --text-encoder assets/base-model/text_encoder --data "$WORK/data" --out "$WORK/unet" --n-latents "$N" \
  --device "$DEVICE" --batch "$BATCH" --lr 2e-4 --steps 10000000 --budget-s "$UNET_S" --save-every 10000000 \
  --threads 2 2>&1 | grep -E "params|00 loss|saved|Error" | tail -40 | tee -a "$log"

stamp "assemble: the shipped pipeline with both parts swapped"
rm -rf "$WORK/assets" && mkdir -p "$WORK/assets" && cp -r assets/base-model "$WORK/assets/"
$PY -m lifelong.world.assemble --only-unet --unet "$WORK/unet/ckpt/ema" --with-vae --vae "$WORK/vae/final" \
  --assets "$WORK/assets" 2>&1 | tee -a "$log"
for part in vae unet; do
  mkdir -p "$OUT/$part" && cp "$WORK/assets/base-model/$part"/{config.json,diffusion_pytorch_model.safetensors} "$OUT/$part/"
done
cp "$WORK/vae/final/quality.json" "$OUT/vae_quality.json"
stamp "done"
