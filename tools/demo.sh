#!/usr/bin/env bash
# make demo: a toy base + 3 specialists with their datasets, a DAM run of a few dozen steps, and
# the table of per-dataset KL to each source after DAM and for the plain average.
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
BIN=${DAM_BIN:-./dam_dist}
DIR=${DEMO_DIR:-demo}
rm -rf "$DIR"
$BIN toy --out "$DIR" --models 3 --seed 1
$BIN --config "$DIR/config.json" --eval-rows 32
echo
echo "merged model: $DIR/merged  (config.json, model.safetensors, dam_coefficients.safetensors, dam_report.json)"
