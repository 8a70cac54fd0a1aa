#!/usr/bin/env bash
# The device run, from the repo root on a GPU machine (after `source .gpu/env.sh` there, or on any
# machine with Node, a GPU, and python3 + PyTorch for the yardstick):
#   bash bench/run-device.sh tests|rope|check|attention|attnrope|torch|gemm|nn|modelcheck|model|modelkeep|capacity|attnd64|torchlayer|demo|ring|ringdist|train|trainfull|passkey|attnvariants|trainsp ...
#   (default: tests rope check attention torch gemm demo)
# Writes logs and JSON under $OUT (default bench/out).
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests rope check attention torch gemm demo)
status=0
run() { local name=$1; shift; echo "=== $name ($(date +%T))"; "$@" || { echo "!!! $name failed ($?)"; status=1; }; }
for p in "${parts[@]}"; do
  case $p in
    tests) run tests bash -c "node_modules/.bin/tap test/*.test.ts > '$OUT/tests.log' 2>&1; rc=\$?; grep -E '^(not ok|ok|# \\{)|# SKIP' '$OUT/tests.log' | grep -v '^    ' | tail -30; exit \$rc" ;;
    rope) run rope node bin/megabeam.js bench rope --out "$OUT/rope.json" ;;
    check) run check bash -c "node bin/megabeam.js bench attention --seqs 64k --reps 1 --dump /tmp/mb-attn-64k > /dev/null && python3 bench/torch_attention.py check /tmp/mb-attn-64k --json '$OUT/attention_check.json'" ;;
    attention) run attention node bin/megabeam.js bench attention --out "$OUT/attention.json" ;;
    attnrope) run attnrope bash -c "node_modules/.bin/tap test/attention-rope.test.ts > '$OUT/attention-rope-tests.log' 2>&1; rc=\$?; grep -E '^\s*not ok|# \\{|# SKIP' '$OUT/attention-rope-tests.log' | tail -20; exit \$rc"
              run attnropebench node bin/megabeam.js bench attention --rope --seqs 16k,128k,512k --reps 3 --out "$OUT/attention_rope.json" ;;
    torch) run torch python3 bench/torch_attention.py time --json "$OUT/torch_attention.json" ;;
    ring) run ring bash -c "node bin/megabeam.js bench ring --world 2,4,8 --seq 512k --out '$OUT/ring.json' && node bin/megabeam.js bench ring --model '$OUT/ring.json'" ;;
    # every GPU of the machine, one process each over NCCL (the multi-GPU kinds): 512K tokens, 1-GPU yardstick on rank 0
    # sequence-parallel training steps of the whole Mistral-7B on every GPU (ZeRO-1 AdamW; an OOM ends the list);
    # TRAINSP_ARGS="--optimizer none" for forward + backward alone (e.g. TRAINSP_SEQS=512k on 2 GPUs)
    trainsp) run trainsp bash -c "node bin/megabeam.js launch --nproc \$(nvidia-smi -L | wc -l) megabeam bench train --full --seqs \${TRAINSP_SEQS:-128k,256k,512k,1m} --reps 2 \${TRAINSP_ARGS:-} --out '$OUT/train_sp.json'" ;;
    ringdist) run ringdist bash -c "node bin/megabeam.js launch --nproc \$(nvidia-smi -L | wc -l) megabeam bench ring-dist --seq \${RINGDIST_SEQ:-512k} --baseline --out '$OUT/ring_dist.json'" ;;
    gemm) run gemm node bin/megabeam.js bench gemm --torch --out "$OUT/gemm.json" ;;
    nn) run nn-tests bash -c "node_modules/.bin/tap test/nn.test.ts > '$OUT/nn-tests.log' 2>&1; rc=\$?; grep -E '^\s*not ok|# \\{|# SKIP' '$OUT/nn-tests.log' | tail -20; exit \$rc"
        run nn node bin/megabeam.js bench nn --out "$OUT/nn.json" ;;
    modelcheck) run modelcheck bash -c "python3 bench/torch_model.py make /tmp/mb-model-check && node bin/megabeam.js bench model check /tmp/mb-model-check --out '$OUT/model_check.json'" ;;
    model) run model node bin/megabeam.js bench model --out "$OUT/model.json" ;;
    # selective checkpointing (keepAttention auto) against the plain recompute, same process, 32K-128K (~3 min)
    capacity) run capacity node bin/megabeam.js bench attention --seqs 2m --reps 1 --out "$OUT/attention_2m.json" ;;
    attnd64) run attnd64 bash -c "node bin/megabeam.js bench attention --seqs 64k,128k,512k --head-dim 64 --out '$OUT/attention_d64.json' && python3 bench/torch_attention.py time --seqs 65536,131072,524288 --head-dim 64 --json '$OUT/torch_attention_d64.json'" ;;
    modelkeep) run modelkeep node bin/megabeam.js bench model --parts model --model-seqs 32k,64k,128k --keep-attention auto,none --out "$OUT/model_keep.json" ;;
    torchlayer) run torchlayer python3 bench/torch_layer.py --json "$OUT/torch_layer.json" ;;
    train) run train-tests bash -c "node_modules/.bin/tap test/train.test.ts > '$OUT/train-tests.log' 2>&1; rc=\$?; grep -E '^\s*not ok|# \\{' '$OUT/train-tests.log' | tail -20; exit \$rc"
           run benchtrain node bin/megabeam.js bench train --out "$OUT/train.json"
           run torchtrain python3 bench/torch_train.py --json "$OUT/torch_train.json" ;;
    trainfull) run benchtrainfull node bin/megabeam.js bench train --full --out "$OUT/train_full.json"
               run torchtrainfull python3 bench/torch_train.py --full --json "$OUT/torch_train_full.json" ;;
    passkey) run passkey bash -c "node examples/passkey.js --out '$OUT/passkey' 2>&1 | grep -v '^\[' | tee '$OUT/passkey.log'" ;;
    demo) run demo bash -c "node bin/megabeam.js demo | tee '$OUT/demo.log'" ;;
    # the attention kernels' prepared variants (bench/dev/variants, bench/NOTES.md) against the product, no Node:
    # harness checks + d=128 timings, then the d=64 timings from the same build (a few minutes of build and checks,
    # then about a minute per variant)
    # ATTN_VARIANTS="bwd_dq_wg bwd_d64_pairsum" picks some (names under bench/dev/variants); all of them may not fit one 10-min call
    attnvariants) if [ -n "${ATTN_VARIANTS:-}" ]; then VARIANT_SCRIPTS=$(for v in $ATTN_VARIANTS; do printf 'bench/dev/variants/%s.py ' "$v"; done)
                  else VARIANT_SCRIPTS=$(ls bench/dev/variants/*.py | tr '\n' ' '); fi
                  export VARIANT_SCRIPTS
                  run attnvariants bash -c "WGMMA=1 VARIANT_CHECK=1 LENS='16384 65536 131072' BIG= VLENS='16384 65536 131072' OUT='$OUT/harness' bash bench/dev/attn_harness.sh all"
                  run attnvariantsd64 bash -c "REUSE_BUILD=1 BENCH_ARGS=--d64 LENS='65536 131072' VLENS='65536 131072' BIG= OUT='$OUT/harness-d64' bash bench/dev/attn_harness.sh bench" ;;
    *) echo "unknown part $p"; status=2 ;;
  esac
done
exit $status
