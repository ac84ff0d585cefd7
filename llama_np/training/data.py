"""Training data: Alpaca instructions and plain text, turned into (ids, labels) examples and
padded micro-batches.

Instruction tuning (Chinese-Alpaca, `scripts/training/build_dataset.py`): each record
{"instruction", "input", "output"} becomes

    source = TRAIN_TEMPLATE.format(instruction=instruction [+ "\\n" + input])
    target = output + EOS
    ids    = encode(source) + encode(target)            (truncated to max_seq_len)
    labels = [IGNORE_INDEX] * len(encode(source)) + encode(target)

so the loss covers only the response and the EOS that teaches the model to stop: the
prompt is context, not something to learn.

Pre-training on plain text (`run_clm_pt_with_peft.py`'s group_texts): the text is tokenized
line by line, the ids are concatenated and cut into blocks of max_seq_len tokens; every
token is a target (labels = ids).

Micro-batches are padded on the right to their longest example with `pad_id`, and the
padding's labels are IGNORE_INDEX (llama_np.ops, -100); the order of examples is a fixed
function of (seed, epoch), so step n always sees the same batch — which is what makes
resuming exact.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from llama_np.ops import IGNORE_INDEX
from llama_np.files.text import read_utf8

# The Chinese-Alpaca training prompt (build_dataset.py PROMPT_TEMPLATE), exactly.
TRAIN_TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response: "
)

ALPACA_SUFFIXES = (".json", ".jsonl")
TEXT_SUFFIXES = (".txt",)


class DataError(ValueError):
    """A data file that cannot be used, naming the file and the record or line."""


@dataclass
class Example:
    ids: np.ndarray      # [T] token ids
    labels: np.ndarray   # [T] the same ids, IGNORE_INDEX where nothing is learned


# ------------------------------------------------------------------------ Alpaca
def read_alpaca(path):
    """Records of an Alpaca file: a JSON list of objects, or JSON Lines (one per line).
    Each needs a string `instruction` and `output`; `input` is optional. A malformed record
    raises DataError naming its index (JSON) or line number (JSONL)."""
    path = os.fspath(path)
    text = read_utf8(path, DataError, "the Alpaca data")
    records = []
    if path.endswith(".jsonl"):
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{line_no}: JSON nested too deeply") from None
            records.append(_check_record(record, f"{path}:{line_no}"))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        except RecursionError:
            raise DataError(f"{path}: JSON nested too deeply") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of {{instruction, input, output}} records")
        records = [_check_record(r, f"{path}: record {i}") for i, r in enumerate(data)]
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _check_record(record, where):
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with instruction/input/output, got {type(record).__name__}")
    for key in ("instruction", "output"):
        if key not in record:
            raise DataError(f"{where}: missing field {key!r}")
        if not isinstance(record[key], str):
            raise DataError(f"{where}: field {key!r} must be a string")
    if not isinstance(record.get("input") or "", str):
        raise DataError(f"{where}: field 'input' must be a string")
    if not record["instruction"].strip():
        raise DataError(f"{where}: empty instruction")
    return {"instruction": record["instruction"], "input": record.get("input") or "",
            "output": record["output"]}


def alpaca_source(record):
    """The prompt of one record, in the training template."""
    instruction = record["instruction"]
    if record["input"]:
        instruction = instruction + "\n" + record["input"]
    return TRAIN_TEMPLATE.format(instruction=instruction)


def alpaca_examples(records, tokenizer, max_seq_len):
    """Tokenize Alpaca records into Examples with the prompt masked.

    Returns (examples, skipped): records whose prompt alone fills max_seq_len keep no target
    and are skipped; `skipped` lists their indices so the caller can report them."""
    if tokenizer.eos_id is None:
        raise DataError("the tokenizer has no EOS token; responses could not be terminated")
    examples, skipped = [], []
    for i, record in enumerate(records):
        source = tokenizer.encode(alpaca_source(record))                        # BOS as the model wants
        target = tokenizer.encode(record["output"], add_bos=False) + [tokenizer.eos_id]
        ids = (source + target)[:max_seq_len]
        labels = ([IGNORE_INDEX] * len(source) + target)[:max_seq_len]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            skipped.append(i)
            continue
        examples.append(Example(np.array(ids, dtype=np.int64), np.array(labels, dtype=np.int64)))
    return examples, skipped


# -------------------------------------------------------------------- plain text
def packed_examples(text, tokenizer, block_size):
    """Plain text → blocks of `block_size` tokens for causal-LM training (labels = ids).

    Each line (with its line break) is tokenized, the ids are concatenated, and the stream
    is cut into blocks; a final partial block is kept as a shorter example."""
    ids = []
    for line in text.splitlines(keepends=True):
        if line.strip():
            ids.extend(tokenizer.encode(line))
    if len(ids) < 2:
        raise DataError("the text has fewer than 2 tokens")
    stream = np.array(ids, dtype=np.int64)
    examples = []
    for start in range(0, len(stream), block_size):
        block = stream[start:start + block_size]
        if len(block) >= 2:
            examples.append(Example(block, block.copy()))
    return examples


def load_examples(path, tokenizer, max_seq_len):
    """Examples from an Alpaca .json/.jsonl or a plain .txt file. Returns (examples, notes):
    notes are human-readable remarks (skipped records) for the caller to print."""
    path = os.fspath(path)
    if path.endswith(ALPACA_SUFFIXES):
        examples, skipped = alpaca_examples(read_alpaca(path), tokenizer, max_seq_len)
        notes = []
        if skipped:
            shown = ", ".join(map(str, skipped[:10])) + (" …" if len(skipped) > 10 else "")
            notes.append(f"{path}: {len(skipped)} record(s) skipped, their prompt alone fills "
                         f"--max-seq-len {max_seq_len}: record {shown}")
        if not examples:
            raise DataError(f"{path}: no record has a response within --max-seq-len {max_seq_len}")
        return examples, notes
    if path.endswith(TEXT_SUFFIXES):
        return packed_examples(read_utf8(path, DataError, "the text"), tokenizer, max_seq_len), []
    raise DataError(f"{path}: unknown data format; expected Alpaca .json/.jsonl or plain .txt")


# ---------------------------------------------------------------------- batches
def collate(examples, pad_id):
    """Right-pad a list of Examples into ids, labels [B, T_max]."""
    length = max(len(e.ids) for e in examples)
    ids = np.full((len(examples), length), pad_id, dtype=np.int64)
    labels = np.full((len(examples), length), IGNORE_INDEX, dtype=np.int64)
    for row, example in enumerate(examples):
        ids[row, :len(example.ids)] = example.ids
        labels[row, :len(example.labels)] = example.labels
    return ids, labels


class BatchSchedule:
    """Which examples form micro-batch m: epoch e = m // batches_per_epoch is a permutation
    of all examples drawn from (seed, e), cut into consecutive micro-batches (the last one
    of an epoch may be smaller). A pure function of m, so a resumed run sees the same data."""

    def __init__(self, examples, batch_size, pad_id, seed=0, shuffle=True):
        if not examples:
            raise DataError("no training examples")
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.shuffle = shuffle
        self.batches_per_epoch = -(-len(examples) // batch_size)

    def order(self, epoch):
        if not self.shuffle:
            return np.arange(len(self.examples))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def micro_batch(self, m):
        """(ids, labels) of micro-batch number m (0-based, counting across epochs)."""
        return collate(self.micro_batch_examples(m), self.pad_id)

    def micro_batch_examples(self, m):
        """The Examples of micro-batch m, unpadded, in their order in the batch."""
        epoch, index = divmod(m, self.batches_per_epoch)
        picked = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        return [self.examples[i] for i in picked]

    def __len__(self):
        return self.batches_per_epoch

    def n_tokens(self):
        return sum(len(e.ids) for e in self.examples)
