"""Alpaca records → the exact Chinese-Alpaca training template with the prompt masked;
plain text → packed blocks; batches; malformed data reported with its place."""
import json

import numpy as np
import pytest

from llama_np.training import data
from llama_np.ops import IGNORE_INDEX


class CharTokenizer:
    """One id per character (ord + 10), BOS 1 and EOS 2: enough to see every boundary."""
    bos_id, eos_id, pad_id, add_bos = 1, 2, 0, True

    def encode(self, text, add_bos=None, add_eos=False):
        ids = [ord(c) + 10 for c in text]
        if self.add_bos if add_bos is None else add_bos:
            ids = [self.bos_id] + ids
        return ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids):
        return "".join(chr(i - 10) for i in ids if i > 9)


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return str(path)


def test_training_template_is_chinese_alpaca_exactly():
    assert data.TRAIN_TEMPLATE == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response: ")
    record = {"instruction": "Add.", "input": "2 and 3", "output": "5"}
    assert data.alpaca_source(record) == data.TRAIN_TEMPLATE.format(instruction="Add.\n2 and 3")
    assert data.alpaca_source({**record, "input": ""}).endswith("### Instruction:\nAdd.\n\n### Response: ")


def test_labels_cover_only_the_response_and_eos():
    tok = CharTokenizer()
    record = {"instruction": "Say hi", "input": "", "output": "hi"}
    [example], skipped = data.alpaca_examples([record], tok, max_seq_len=1000)
    source = tok.encode(data.alpaca_source(record))
    assert skipped == []
    assert tok.decode(example.ids) == data.alpaca_source(record) + "hi"
    assert example.ids[0] == tok.bos_id and example.ids[-1] == tok.eos_id
    assert list(example.labels[:len(source)]) == [IGNORE_INDEX] * len(source)
    assert list(example.labels[len(source):]) == [ord("h") + 10, ord("i") + 10, tok.eos_id]


def test_long_examples_are_truncated_and_prompt_only_ones_reported():
    tok = CharTokenizer()
    records = [{"instruction": "x", "input": "", "output": "y" * 500},
               {"instruction": "z" * 500, "input": "", "output": "w"}]
    examples, skipped = data.alpaca_examples(records, tok, max_seq_len=200)
    assert len(examples) == 1 and len(examples[0].ids) == 200 and skipped == [1]


def test_real_tokenizer_masks_the_template(real_model_path):
    from llama_np.checkpoint import load_tokenizer
    tok = load_tokenizer(real_model_path)
    record = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    [example], _ = data.alpaca_examples([record], tok, 512)
    learned = example.ids[example.labels != IGNORE_INDEX]
    assert list(learned) == tok.encode("Blue.", add_bos=False) + [tok.eos_id]
    assert tok.decode(list(example.ids[:len(example.ids) - len(learned)])) == data.alpaca_source(record)


def test_alpaca_json_and_jsonl_read_the_same(tmp_path):
    records = [{"instruction": "a", "input": "b", "output": "c"}, {"instruction": "d", "output": "e"}]
    from_json = data.read_alpaca(write(tmp_path, "d.json", records))
    from_jsonl = data.read_alpaca(write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n"))
    assert from_json == from_jsonl == [records[0], {"instruction": "d", "input": "", "output": "e"}]


def test_the_demo_file_reads(tmp_path):
    from llama_np.files import hub
    records = data.read_alpaca(hub.data_path("hiyouga/LLaMA-Factory/data/alpaca_en_demo.json"))
    assert len(records) == 999


@pytest.mark.parametrize("name, content, message", [
    ("d.json", [{"instruction": "a", "output": "b"}, {"instruction": "c"}], r"record 1: missing field 'output'"),
    ("d.json", [{"instruction": "a", "output": 3}], r"record 0: field 'output' must be a string"),
    ("d.json", {"instruction": "a"}, "expected a JSON list"),
    ("d.json", "[{", "not valid JSON"),
    ("d.json", [], "no records"),
    ("d.jsonl", '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "outptu": "d"}\n', r"d.jsonl:3: missing field 'output'"),
    ("d.jsonl", '{"instruction": "a", "output": "b"}\nnot json\n', r"d.jsonl:2: not valid JSON"),
    ("d.jsonl", '["a", "b"]\n', r"d.jsonl:1: expected an object"),
    ("d.json", [{"instruction": " ", "output": "b"}], "record 0: empty instruction"),
])
def test_malformed_records_are_named(tmp_path, name, content, message):
    with pytest.raises(data.DataError, match=message):
        data.read_alpaca(write(tmp_path, name, content))


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(data.DataError, match="no such file"):
        data.load_examples(str(tmp_path / "nope.json"), CharTokenizer(), 64)
    with pytest.raises(data.DataError, match="unknown data format"):
        data.load_examples(write(tmp_path, "d.csv", "a,b"), CharTokenizer(), 64)
    with pytest.raises(data.DataError, match="empty"):
        data.load_examples(write(tmp_path, "d.txt", "\n\n"), CharTokenizer(), 64)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(data.DataError, match="not UTF-8"):
        data.load_examples(str(tmp_path / "bad.txt"), CharTokenizer(), 64)


def test_plain_text_is_packed_into_blocks(tmp_path):
    tok = CharTokenizer()
    text = "first line\n\nsecond line\nthird\n"
    examples, notes = data.load_examples(write(tmp_path, "t.txt", text), tok, 8)
    stream = np.concatenate([e.ids for e in examples])
    expected = tok.encode("first line\n") + tok.encode("second line\n") + tok.encode("third\n")
    assert list(stream) == expected and notes == []
    assert all(len(e.ids) == 8 for e in examples[:-1])
    assert all(np.array_equal(e.ids, e.labels) for e in examples)


def test_batches_pad_right_and_repeat_per_epoch():
    examples = [data.Example(np.arange(n) + 3, np.arange(n) + 3) for n in (2, 5, 3, 4, 6)]
    schedule = data.BatchSchedule(examples, batch_size=2, pad_id=0, seed=1)
    assert len(schedule) == 3
    ids, labels = schedule.micro_batch(0)
    lengths = (labels != IGNORE_INDEX).sum(axis=1)
    assert ids.shape == (2, lengths.max())
    for row, n in enumerate(lengths):
        assert not ids[row, n:].any() and (labels[row, n:] == IGNORE_INDEX).all()
    seen = sorted(int((schedule.micro_batch(m)[1] != IGNORE_INDEX).sum(axis=1)[r])
                  for m in range(3) for r in range(len(schedule.micro_batch(m)[0])))
    assert seen == [2, 3, 4, 5, 6]  # one epoch: every example once
    assert np.array_equal(schedule.micro_batch(4)[0], data.BatchSchedule(examples, 2, 0, seed=1).micro_batch(4)[0])
    assert not np.array_equal(schedule.order(0), schedule.order(1))
