#!/usr/bin/env bash
# Reproduce arXiv 2511.19333 (12B base students distilled from DeepSeek-R1 vs gpt-oss-120b traces of the
# same math problems) end to end: ingest -> generate -> verify -> curate -> train sft -> eval -> report.
#
#   bash scripts/reproduce_paper.sh                       # the paper, on one node with 8 x 80 GB GPUs
#   STUDENTS=mistral-nemo BENCHMARKS=gsm8k bash scripts/reproduce_paper.sh   # a slice of it
#
# Every stage is resumable and a finished stage is a no-op, so after a crash rerun the script. Each
# stage names its run with --link: runs/paper/traces-r1, traces-gpt-oss, verdicts, curated,
# model-<student>-<teacher>, result-<student>-<teacher>-<benchmark> are symlinks to the hashed run
# directories, and the next stage takes them by those names. tests/e2e/test_reproduce_script.py runs this
# same file on CPU with tiny stand-ins (a tiny student, a few local rows, the hf backend).
set -euo pipefail
cd "$(dirname "$0")/.."

# ---- what to run (override any of these from the environment) ------------------------------------
OUT=${OUT:-runs/paper}
TW=${TW:-tracewise}                                   # the CLI ("python -m tracewise.cli" works too)
TOKENIZER=${TOKENIZER:-mistralai/Mistral-Nemo-Base-2407}   # token counts in the student's tokenizer
# R1 traces: Nemotron-Post-Training-Dataset-v1, math split, reasoning on (the paper sampled 300k problems).
R1_DATA=${R1_DATA:-nvidia/Nemotron-Post-Training-Dataset-v1}
R1_SPLIT=${R1_SPLIT:-math}
R1_LIMIT=${R1_LIMIT:-300000}
# That dataset has no gold answers. GOLD_SOURCE=join takes them from GOLD_DATA by normalised problem text
# (its math prompts are OpenMathReasoning's AoPS problems: build GOLD_DATA as docs/reproduce_paper.md
# shows); GOLD_SOURCE=teacher makes R1's own answer the gold (curation by teacher agreement).
GOLD_SOURCE=${GOLD_SOURCE:-join}
GOLD_DATA=${GOLD_DATA:-data/openmathreasoning_gold.jsonl}
# gpt-oss traces for the SAME problems: generated with vLLM, or ingested from GPTOSS_TRACES if set.
GPTOSS_MODEL=${GPTOSS_MODEL:-openai/gpt-oss-120b}
GPTOSS_TRACES=${GPTOSS_TRACES:-}
STUDENTS=${STUDENTS:-"mistral-nemo nemotron-nano"}    # configs/paper/sft_<student>_<teacher>.yaml
TEACHERS=${TEACHERS:-"r1 gpt-oss"}
BENCHMARKS=${BENCHMARKS:-"gsm8k math500 aime24"}
SFT_LAUNCH=${SFT_LAUNCH:-}                            # "" = accelerate + the student's ZeRO-3 config
STOP_AFTER=${STOP_AFTER:-}                            # ingest | generate | verify | curate | sft | eval
# Extra KEY=VALUE overrides per stage (word-split), e.g. EVAL_ARGS="sampling.n=4".
INGEST_ARGS=${INGEST_ARGS:-}; GEN_ARGS=${GEN_ARGS:-}; VERIFY_ARGS=${VERIFY_ARGS:-}; CURATE_ARGS=${CURATE_ARGS:-}
SFT_ARGS=${SFT_ARGS:-}; EVAL_ARGS=${EVAL_ARGS:-}; REPORT_ARGS=${REPORT_ARGS:-}

tw() { echo "+ $TW $*" >&2; $TW "$@"; }
stop_after() { if [ "$STOP_AFTER" = "$1" ]; then echo "stopped after $1 (STOP_AFTER)" >&2; exit 0; fi; }
sft_launch() {  # Nemotron-H needs its Mamba-2 mixer as a ZeRO-3 leaf (configs/accelerate/zero3_nemotron_h.yaml)
  if [ -n "$SFT_LAUNCH" ]; then echo "$SFT_LAUNCH"; return; fi
  case "$1" in nemotron*) cfg=zero3_nemotron_h.yaml ;; *) cfg=zero3.yaml ;; esac
  echo "accelerate launch --config_file configs/accelerate/$cfg -m tracewise.cli"
}
gold_args() {
  case "$GOLD_SOURCE" in
    join) echo "gold.source=join gold.path=$GOLD_DATA" ;;
    teacher) echo "gold.source=teacher" ;;
    *) echo "GOLD_SOURCE must be join or teacher, got '$GOLD_SOURCE'" >&2; exit 2 ;;
  esac
}

# 1. R1 traces (reasoning on, gold answers), then gpt-oss traces for the same problems.
tw ingest out="$OUT" path="$R1_DATA" split="$R1_SPLIT" format=nemotron teacher=r1 reasoning=on \
    tokenizer="$TOKENIZER" limit="$R1_LIMIT" $(gold_args) $INGEST_ARGS --link traces-r1
stop_after ingest
if [ -n "$GPTOSS_TRACES" ]; then
  # Existing gpt-oss traces: their problems take the R1 run's golds by problem text (gold.missing=keep: a
  # problem without one is dropped by curate, never trained on).
  tw ingest out="$OUT" path="$GPTOSS_TRACES" teacher=gpt-oss tokenizer="$TOKENIZER" gold.source=join \
      gold.path="$OUT/traces-r1/problems.jsonl" gold.missing=keep $INGEST_ARGS --link traces-gpt-oss
else
  tw generate out="$OUT" name=gpt-oss backend=vllm model="$GPTOSS_MODEL" tokenizer="$TOKENIZER" \
      problems.source="$OUT/traces-r1/problems.jsonl" vllm.tensor_parallel_size=8 vllm.max_model_len=40960 \
      sampling.temperature=1.0 sampling.max_tokens=32768 $GEN_ARGS --link traces-gpt-oss
fi
stop_after generate

# 2. Verify with the paper's judge (Qwen3-30B-A3B-Thinking) next to math-verify.
tw verify -c configs/paper/verify_qwen3_judge.yaml out="$OUT" \
    "generations=[$OUT/traces-r1,$OUT/traces-gpt-oss]" $VERIFY_ARGS --link verdicts
stop_after verify

# 3. Curate: the problems BOTH teachers got right; one dataset per teacher over the same problems.
tw curate out="$OUT" filter=judge mix=false verdicts="$OUT/verdicts" \
    "generations=[$OUT/traces-r1,$OUT/traces-gpt-oss]" $CURATE_ARGS --link curated
stop_after curate

# 4. SFT: every student on every teacher's dataset (3000 steps, global batch 64, ZeRO-3).
for s in $STUDENTS; do for t in $TEACHERS; do
  echo "+ $(sft_launch "$s") train sft -c configs/paper/sft_${s}_${t}.yaml ..." >&2
  $(sft_launch "$s") train sft -c "configs/paper/sft_${s}_${t}.yaml" out="$OUT" \
      dataset="$OUT/curated/datasets/$t" $SFT_ARGS --link "model-$s-$t"
done; done
stop_after sft

# 5. Eval every student on every benchmark (8 samples, T=0.6, vLLM).
summaries=(); logs=()
for s in $STUDENTS; do for t in $TEACHERS; do
  logs+=("$OUT/model-$s-$t/log_history.json")
  for b in $BENCHMARKS; do
    name=$(basename "$b" .jsonl)
    tw eval -c configs/paper/eval_student.yaml out="$OUT" model="$OUT/model-$s-$t/model" \
        experiment="$s-$t" problems.source="$b" benchmark="$name" $EVAL_ARGS --link "result-$s-$t-$name"
    summaries+=("$OUT/result-$s-$t-$name/summary.json")
  done
done; done
stop_after eval

# 6. Report: accuracy next to tokens per student and benchmark, learning curves, the curation table.
join_paths() { local IFS=,; echo "$*"; }
tw report out="$OUT/report" "summaries=[$(join_paths "${summaries[@]}")]" \
    "train_logs=[$(join_paths "${logs[@]}")]" curate_table="$OUT/curated/table.md" $REPORT_ARGS
echo "report: $OUT/report/report.html" >&2
