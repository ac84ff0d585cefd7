"""The recipe's defaults, each with the reason it was chosen (the measurements behind them:
docs/benchmarks.md#recipe). No heavy imports: the tools' `--help` reads them.

The paper's LoRA settings are r 8, alpha 32, dropout 0.05, lr 2e-4 for pre-training and
1e-4 for SFT (docs/recipe.md#hyper-parameters); on the small default model a larger
stage-2 lr learns faster, and stage 1 is kept short because a large lr there moves every
new row, the rarely seen ones too, and made held-out text worse.
"""
STAGES = ("stage1", "stage2", "sft")

# --budget: how much the recipe trains. "hour" is the default run, under an hour on 2 cores
# (900 stage-2 steps: 46 minutes, 12.3% below the base model; 500 ended 5.0% below);
# "quick" a look at every step in minutes on a sliver of the text (notebook 05); "long" the
# README's long run. A flag given on the command line wins over its budget.
# documents: the first N training documents only (None: all); the evaluation scores
# eval_windows windows of eval_ctx tokens' worth of held-out characters.
_HOUR = {"steps": {"stage1": 20, "stage2": 900, "sft": 40}, "new_tokens": 4000, "documents": None,
         "max_seq_len": 256, "eval_ctx": 256, "eval_windows": 16}
BUDGETS = {
    "quick": {**_HOUR, "steps": {"stage1": 3, "stage2": 3, "sft": 3}, "documents": 300, "new_tokens": 1000,
              "max_seq_len": 64, "eval_ctx": 128, "eval_windows": 2},
    "hour": _HOUR,
    "long": {**_HOUR, "steps": {"stage1": 20, "stage2": 1400, "sft": 40}},
}
DEFAULT_BUDGET = "hour"
BUDGETED = tuple(name for name in _HOUR if name != "steps")   # what a budget sets besides the steps
DEFAULT_LR = {"stage1": 2e-4, "stage2": 1e-3, "sft": 5e-4}
# SFT's data is instructions, not Wikipedia: the embedding (= tied head) learns at a lower
# rate than SFT's LoRA, which costs the held-out wiki text far fewer bits.
DEFAULT_EMBEDDING_LR = {"stage1": None, "stage2": None, "sft": 1e-4}
# Each stage shuffles the data with its own seed: with one seed for all, stage 2 would
# read again, in the same order, the very examples stage 1 just trained on.
STAGE_SEEDS = {"stage1": 42, "stage2": 43, "sft": 44}

# How the resize step starts the new rows: "pieces" (the mean of the rows of the old tokens
# that spell the new one) starts far closer to the base model than "mean" (of all rows).
INIT_METHODS = ("pieces", "mean")
DEFAULT_INIT = "pieces"

# Pre-training reads all the Chinese prose of the data mirror (llama_np.chinese.corpus): on
# the corpus alone the model starts to remember the text from its third pass on (a 1,000-step
# stage 2 ended at 6.014 bits per character; with the extra text 5.914 after 800 steps).
DEFAULT_PRETRAIN_TEXT = ("cmrc2018", "song_ci", "cmrc2018_questions", "alpaca_zh")
# The LoRA of stages 2 and SFT (one adapter: SFT starts from stage 2's), the paper's setting.
# Rank 64 (alpha 128, Chinese-Alpaca-Plus's) learns a little faster but ends level: 400 stage-2
# steps 6.556 bits per character against 6.669, the long run 5.714 against 5.751, each step
# ~20% slower. What the long run lacks is text, not capacity (docs/benchmarks.md#recipe).
DEFAULT_LORA = {"lora_r": 8, "lora_alpha": 32.0, "lora_dropout": 0.05}
# Stage 2's LoRA on all seven projections, as the paper's released script (its text says
# attention): after 100 steps 7.522 bits per character, against 7.708 on attention alone.
DEFAULT_STAGE2_TARGETS = "all"
