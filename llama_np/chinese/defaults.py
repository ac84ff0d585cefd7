"""The recipe's defaults, each with the reason it was chosen (the measurements behind them:
docs/benchmarks.md#recipe). No heavy imports: the tools' `--help` reads them.

The paper's LoRA settings are r 8, alpha 32, dropout 0.05, lr 2e-4 for pre-training and
1e-4 for SFT (docs/recipe.md#hyper-parameters); on the small default model a larger
stage-2 lr learns faster, and stage 1 is kept short because a large lr there moves every
new row, the rarely seen ones too, and made held-out text worse.
"""
STAGES = ("stage1", "stage2", "sft")
DEFAULT_STEPS = {"stage1": 20, "stage2": 200, "sft": 40}
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
