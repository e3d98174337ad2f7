#!/usr/bin/env bash
# The whole job on the embedded phantom data set, on the CPU, on a demo budget:
# install (once), generate the phantom set, train the GAN and the diffusion generator briefly,
# evaluate both on the test split, grade the fractures with and without synthesis and print
# one comparison table.
# A demo budget is far from a converged model: see docs/BENCHMARKS.md for longer runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

SIZE="${DEMO_IMG_SIZE:-64}"
EPOCHS="${DEMO_EPOCHS:-20}"
DECAY="${DEMO_EPOCHS_DECAY:-10}"
# sampler steps of the diffusion generator: its default (see DIFFUSION_QUICKSTART.md) unless set
STEPS=(${DEMO_STEPS:+--num_inference_steps "$DEMO_STEPS"})
ROOT="datasets/phantom"
COMMON=(--dataroot "$ROOT" --img_size "$SIZE" --gpu_ids -1 --seed 0 --batch_size 8 --num_workers 2)
LOGS="results/demo_logs"
mkdir -p "$LOGS"
start=$(date +%s)

run() {  # run LOGNAME CMD...: keep the console short, show the log's tail on failure
    local log="$LOGS/$1.log"; shift
    "$@" > "$log" 2>&1 || { tail -25 "$log"; echo "[demo] failed: see $log" >&2; exit 1; }
}

echo "[demo] 1/6 phantom data set: 20 patients at ${SIZE} px -> $ROOT"
run phantom "$PY" scripts/make_phantom.py --out "$ROOT" --n_patients 20 --img_size "$SIZE" \
    --seed 0 --overwrite --quiet

echo "[demo] 2/6 Grad-CAM++ heatmaps: fracture classifier, then maps replacing the provisional ones"
run classifier "$PY" scripts/train_classifier.py --dataroot "$ROOT" --img_size "$SIZE" --epochs 10 \
    --out checkpoints/demo_classifier/classifier.pth --gpu_ids -1 --quiet
run heatmaps "$PY" scripts/make_heatmaps.py --dataroot "$ROOT" \
    --classifier checkpoints/demo_classifier/classifier.pth --gpu_ids -1 --quiet --evaluate test
"$PY" - "$LOGS/heatmaps.log" <<'PYEOF'
import json, sys
text = open(sys.argv[1]).read()
report = json.loads(text[text.index("{"):])
for group in ("fractured", "normal"):
    r = report[group]
    print(f"    heatmap mass in the {group} vertebrae of the test split: {r['ratio_of_means']:.1f}x "
          f"chance (n={r['n']})")
PYEOF

echo "[demo] 3/6 training the GAN generator (${EPOCHS}+${DECAY} epochs, demo budget)"
run train_gan "$PY" train.py "${COMMON[@]}" --name demo_gan --netG_type gan \
    --n_epochs "$EPOCHS" --n_epochs_decay "$DECAY" --save_epoch_freq 100 --print_freq 200 --overwrite

echo "[demo] 4/6 training the diffusion generator (${EPOCHS}+${DECAY} epochs, demo budget)"
run train_diffusion "$PY" train.py "${COMMON[@]}" --name demo_diffusion --netG_type diffusion \
    --n_epochs "$EPOCHS" --n_epochs_decay "$DECAY" --save_epoch_freq 100 --print_freq 200 --overwrite

echo "[demo] 5/6 evaluating both on the test split"
run test_gan "$PY" test.py "${COMMON[@]}" --name demo_gan --netG_type gan --results_dir results
run test_diffusion "$PY" test.py "${COMMON[@]}" --name demo_diffusion --netG_type diffusion \
    --results_dir results "${STEPS[@]}"

echo "[demo] 6/6 Genant grading: whole val+test vertebrae synthesised, RHLV vs neighbour heights"
for G in gan diffusion; do
    run "synthesis_$G" "$PY" scripts/synthesize_volume.py "${COMMON[@]}" --name "demo_$G" \
        --netG_type "$G" --results_dir results --phase all_eval "${STEPS[@]}" \
        --out "results/demo_$G/synthesis_all_eval"
    run "grading_$G" "$PY" scripts/grade_synthesis.py --dataroot "$ROOT" --phase all_eval \
        --synthesis "results/demo_$G/synthesis_all_eval" --out "results/demo_$G/grading_all_eval"
done

echo
echo "Phantom, ${SIZE} px, images scored on the test split, demo budget ($(( $(date +%s) - start )) s in all):"
"$PY" scripts/compare_results.py results/demo_gan/test_latest results/demo_diffusion/test_latest \
    --grading results/demo_gan/grading_all_eval results/demo_diffusion/grading_all_eval
echo
echo "HTML reports:"
echo "  training:   checkpoints/demo_gan/web/index.html  checkpoints/demo_diffusion/web/index.html"
echo "  evaluation: results/demo_gan/test_latest/index.html  results/demo_diffusion/test_latest/index.html"
echo "  grading:    results/demo_gan/grading_all_eval/  results/demo_diffusion/grading_all_eval/ (confusion matrices)"
