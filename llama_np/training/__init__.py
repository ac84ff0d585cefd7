"""Training a LoRA adapter (plus embedding / lm_head copies) on a frozen, possibly quantized,
LLaMA.

    trainable.py       TrainableLlama: the model's training forward, keeping a tape, and its
                       backward
    training_layer.py  the block's training use (`llama.model.block_forward` /
                       `block_backward`): stacked products with LoRA, attention within each
                       sequence, a tape
    shards.py          running a batch's shards at once in threads
    memory.py          keeping the memory a step frees for the next step
    blas_kernels.py    a note when OPENBLAS_CORETYPE holds NumPy's products to narrower
                       kernels than the CPU has
    trainer.py         AdamW, the learning-rate schedule, clipping, the loop and its
                       checkpoints (exact resume)
    data.py            Alpaca instructions and plain text → (ids, labels) examples and padded
                       micro-batches
    config.py          FinetuneConfig: everything that defines a fine-tuning run, one typed
                       object (no heavy imports: the tools' --help reads it)
    run.py             finetune(config): load the model and data, build the adapter, train,
                       write the PEFT folder and checkpoints
    export.py          export_torch(config): the same run written for Hugging Face Trainer +
                       peft + DeepSpeed (model, data, starting adapter, script, ZeRO-2 config);
                       export_files/ holds the script and README it writes (never imported)

Imports: only the subpackages below it: `llama_np.checkpoint` (adapter files),
`llama_np.llama` (the block, the adapter), `llama_np.kernels`, `llama_np.tokenizer`,
`llama_np.files`, `llama_np.ops`, `llama_np.quant`.
"""
