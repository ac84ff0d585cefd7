"""The tokenizers against independent oracles: transformers' tokenizer for the real GGUF,
the `sentencepiece` library for the LLaMA tokenizer, and llama.cpp's pre-tokenizer regexes
(re-run here with the `regex` module) for byte-level BPE."""
import os
import random
import subprocess
import sys

import pytest

from llama_np.tokenizer.tokenizers import Tokenizer, TokenizerError
from llama_np.checkpoint import load_tokenizer

MIXED = "Hello, world! 你好，世界。 🦙🚀 def f(x):\n    return x**2  # 12345\n\n\t end <|im_start|>"
TEXTS = [
    MIXED,
    "",
    " leading space, trailing space ",
    "中文分词：小明硕士毕业于中国科学院计算所，后在日本京都大学深造。",
    "Emoji: 👩‍💻🎉 and accents: naïve café, Ünïcödé",
    "Numbers 3.14159, 1,000,000 and 2024-05-17",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "x = {'a': [1, 2, 3]}\nif x['a'][0] >= 1:\n\tprint(\"ok\")  # done",
]
CHINESE_EMOJI = "我爱北京天安门🦙！龍🐉鹦鹉 𝄞 ✓"


# ----- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol(real_model_path):
    """Our tokenizer of the real default GGUF (byte-level BPE, pre 'smollm')."""
    return load_tokenizer(real_model_path)


@pytest.fixture(scope="module")
def hf_smol(real_model_path):
    """transformers' tokenizer of the same GGUF (~10 s to build)."""
    transformers = pytest.importorskip("transformers")
    folder, name = os.path.split(real_model_path)
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.fixture(scope="module")
def sp_oracle(llama_sp_model):
    import sentencepiece
    return sentencepiece.SentencePieceProcessor(model_file=llama_sp_model)


@pytest.fixture(scope="module")
def llama_sp(llama_sp_model):
    return load_tokenizer(llama_sp_model)


def sentencepiece_gguf_metadata(sp):
    """The `tokenizer.ggml.*` metadata llama.cpp's converter writes for a SentencePiece model."""
    def token_type(i):
        for check, kind in ((sp.is_unknown, 2), (sp.is_control, 3), (sp.is_unused, 5), (sp.is_byte, 6)):
            if check(i):
                return kind
        return 1
    n = sp.get_piece_size()
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": [token_type(i) for i in range(n)],
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
    }


# ----- byte-level BPE: the real GGUF ---------------------------------------------------------

def test_bpe_metadata_of_the_real_model(smol):
    assert smol.vocab_size == 49152
    assert (smol.bos_id, smol.eos_id, smol.pad_id, smol.add_bos) == (1, 2, 2, False)
    assert smol.special_token_text(smol.eos_id) == "<|im_end|>"
    assert smol.chat_template.startswith("{% for message in messages %}")


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_ids_match_transformers(smol, hf_smol, text):
    # transformers' GGUF loader has no entry for pre 'smollm' and so uses GPT-2's regex
    # without StarCoder's digit split; the two agree except where a run of two or more
    # spaces is followed by a digit (see test_bpe_pre_tokenizers_follow_llama_cpp).
    assert smol.encode(text) == hf_smol(text, add_special_tokens=True).input_ids


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_decode_round_trips_and_matches_transformers(smol, hf_smol, text):
    ids = smol.encode(text)
    assert smol.decode(ids) == text
    assert smol.decode(ids) == hf_smol.decode(ids, skip_special_tokens=False)
    assert smol.decode(ids, skip_special=True) == hf_smol.decode(ids, skip_special_tokens=True)


def test_bpe_special_tokens_are_single_ids(smol, hf_smol):
    for token in hf_smol.all_special_tokens + ["<|im_start|>", "<|im_end|>", "<repo_name>", "<empty_output>"]:
        token_id = hf_smol.convert_tokens_to_ids(token)
        assert smol.encode(token) == [token_id]
        assert smol.piece_to_id(token) == token_id
        assert smol.decode([token_id]) == token
        assert smol.decode([token_id], skip_special=True) == ""
    assert smol.encode("<|im_end|>\n<|im_start|>assistant")[:1] == [2]


def test_bpe_pieces(smol, hf_smol):
    ids = smol.encode(" world 你")
    assert [smol.id_to_piece(i) for i in ids] == hf_smol.convert_ids_to_tokens(ids)
    assert smol.piece_to_id("Ġworld") == hf_smol.convert_tokens_to_ids("Ġworld")
    assert smol.piece_to_id("no such piece") is None
    assert smol.encode("hi", add_bos=True, add_eos=True) == [1] + smol.encode("hi") + [2]


def test_model_chat_template_renders_like_transformers(smol, hf_smol):
    from llama_np.tokenizer.templates import render_chat
    messages = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "2+2?"}]
    for conversation in (messages, [{"role": "system", "content": "Be brief."}] + messages):
        expected = hf_smol.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        ours = render_chat(conversation, smol.chat_template,
                           bos_token=smol.special_token_text(smol.bos_id),
                           eos_token=smol.special_token_text(smol.eos_id))
        assert ours == expected
        assert smol.encode(ours) == hf_smol(expected).input_ids


def test_hf_folder_saved_by_transformers(smol, hf_smol, tmp_path):
    """tokenizer.json + tokenizer_config.json (+ chat_template.jinja), as save_pretrained writes them."""
    hf_smol.save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (smol.bos_id, smol.eos_id, smol.pad_id, False)
    assert tok.vocab_size == smol.vocab_size
    assert tok.chat_template == smol.chat_template
    for text in TEXTS + ["two  1 spaces   22 before digits"]:
        assert tok.encode(text) == hf_smol(text).input_ids
        assert tok.decode(tok.encode(text)) == text


def test_hf_folder_add_bos_follows_the_post_processor(tmp_path):
    """Without an add_bos_token flag, BOS is added when tokenizer.json's post-processor adds it."""
    import json
    from tokenizers import Tokenizer as HFBackend, models, pre_tokenizers, processors
    backend = HFBackend(models.WordLevel({"<s>": 0, "</s>": 1, "a": 2, "[UNK]": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    backend.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos, tok.chat_template) == (0, 1, None, True, None)
    assert tok.encode("a a") == [0, 2, 2]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(dict(config, add_bos_token=False)))
    assert load_tokenizer(tmp_path).encode("a a") == [2, 2]


# ----- byte-level BPE: the pre-tokenizers, against llama.cpp's regexes ----------------------

# src/llama-vocab.cpp: the regexes llama.cpp splits text with, applied one after another
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA_CPP_SPLITS = {
    "gpt-2": [GPT2_REGEX],
    "smollm": [r"\p{N}", GPT2_REGEX],
    "llama-bpe": [r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                  r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "qwen2": [r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
              r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
}
PRE_TOKENIZER_TEXTS = TEXTS[:1] + TEXTS[2:6] + [
    "a  1", "x   12  3\n 4", "I'm   2024's \n\n  wINNER 1234567!!  \n", "tabs\t\t9 and\r\nCRLF 10",
]


def bytes_to_unicode():
    """GPT-2's byte → stand-in character table: printable Latin-1 bytes stand for
    themselves, the other 68 bytes get the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def llama_cpp_bpe_ids(text, splits, bpe_model, special_ids, ignore_merges):
    """llama.cpp's way: cut out the special tokens, split the rest with each regex in turn
    (unmatched stretches stay chunks), then spell each chunk's bytes with stand-ins and run
    BPE on it alone (or, with `ignore_merges`, take a chunk that is in the vocabulary whole)."""
    import regex
    specials = "|".join(regex.escape(s) for s in sorted(special_ids, key=len, reverse=True))
    ids = []
    for k, part in enumerate(regex.split(f"({specials})", text)):
        if k % 2:
            ids.append(special_ids[part])
        else:
            ids += byte_level_bpe_ids(part, splits, bpe_model, ignore_merges)
    return ids


def byte_level_bpe_ids(text, splits, bpe_model, ignore_merges):
    import regex
    chunks = [text]
    for pattern in splits:
        finer = []
        for chunk in chunks:
            pos = 0
            for m in regex.finditer(pattern, chunk):
                finer += [chunk[pos:m.start()], m.group()]
                pos = m.end()
            finer.append(chunk[pos:])
        chunks = [c for c in finer if c]
    table = bytes_to_unicode()
    ids = []
    for chunk in chunks:
        spelled = "".join(table[b] for b in chunk.encode("utf-8"))
        whole = bpe_model.token_to_id(spelled) if ignore_merges else None
        ids += [whole] if whole is not None else [t.id for t in bpe_model.tokenize(spelled)]
    return ids


@pytest.mark.parametrize("pre", sorted(LLAMA_CPP_SPLITS))
def test_bpe_pre_tokenizers_follow_llama_cpp(real_model_path, hf_smol, pre):
    from llama_np.checkpoint.gguf_file import GGUFFile
    meta = dict(GGUFFile(real_model_path).metadata)
    meta["tokenizer.ggml.pre"] = pre
    tok = Tokenizer.from_gguf_metadata(meta)
    specials = {t: i for i, (t, kind) in enumerate(zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]))
                if kind == 3}
    for text in PRE_TOKENIZER_TEXTS:
        expected = llama_cpp_bpe_ids(text, LLAMA_CPP_SPLITS[pre], hf_smol.backend_tokenizer.model, specials,
                                     ignore_merges=pre == "llama-bpe")
        assert tok.encode(text) == expected, text


# ----- SentencePiece ---------------------------------------------------------------------

@pytest.mark.parametrize("text", TEXTS[:6] + ["  two leading spaces", "a\n\nb", "ε = 0.1"])
def test_sentencepiece_ids_match_sentencepiece(llama_sp, sp_oracle, text):
    expected = sp_oracle.encode(text)
    assert llama_sp.encode(text, add_bos=False) == expected
    assert llama_sp.encode(text) == [sp_oracle.bos_id()] + expected  # LLaMA adds BOS by default
    assert llama_sp.decode(expected) == sp_oracle.decode(expected)


def test_sentencepiece_metadata(llama_sp, sp_oracle):
    assert llama_sp.vocab_size == sp_oracle.get_piece_size() == 32000
    assert (llama_sp.bos_id, llama_sp.eos_id, llama_sp.pad_id, llama_sp.add_bos) == (1, 2, None, True)
    assert llama_sp.chat_template is None
    assert llama_sp.special_token_text(llama_sp.eos_id) == "</s>"
    assert [llama_sp.id_to_piece(i) for i in (0, 3, 15043)] == ["<unk>", "<0x00>", "▁Hello"]
    assert llama_sp.piece_to_id("▁Hello") == 15043
    assert llama_sp.piece_to_id("no such piece") is None


def test_sentencepiece_special_tokens_in_text(llama_sp, sp_oracle):
    """Each stretch of text between special tokens is encoded on its own (llama.cpp's rule),
    so gets its own dummy-prefix space; decoding gives the text back."""
    text = "<s>Hello</s> world</s>"
    ids = llama_sp.encode(text, add_bos=False)
    assert ids == [1] + sp_oracle.encode("Hello") + [2] + sp_oracle.encode(" world") + [2]
    assert llama_sp.decode(ids) == text
    assert llama_sp.decode(ids, skip_special=True) == sp_oracle.decode(ids)


def test_sentencepiece_from_gguf_file(sp_oracle, tmp_path):
    """A GGUF "llama" vocabulary (written here with the gguf package) rebuilt as a
    SentencePiece model gives the same ids as the original tokenizer.model."""
    gguf = pytest.importorskip("gguf")
    meta = sentencepiece_gguf_metadata(sp_oracle)
    path = str(tmp_path / "vocab-only.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_scores(meta["tokenizer.ggml.scores"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{{ messages[0]['content'] }}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    tok = load_tokenizer(path)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == (32000, 1, 2, True)
    assert tok.chat_template == "{{ messages[0]['content'] }}"
    for text in TEXTS[:6] + ["  two leading spaces", CHINESE_EMOJI]:
        assert tok.encode(text, add_bos=False) == sp_oracle.encode(text)
        assert tok.decode(sp_oracle.encode(text)) == sp_oracle.decode(sp_oracle.encode(text))


def test_sentencepiece_hf_folder_with_added_pad(llama_sp_model, sp_oracle, tmp_path):
    """A Chinese-Alpaca style folder: tokenizer.model, a "[PAD]" added after the pieces,
    and tokenizer_config.json with add_bos_token and a chat template."""
    import json
    import shutil
    shutil.copy(llama_sp_model, tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"[PAD]": 32000}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>", "pad_token": "[PAD]",
        "add_bos_token": False, "chat_template": "{{ bos_token }}{{ messages[0]['content'] }}"}))
    tok = load_tokenizer(tmp_path)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (32001, 1, 2, 32000, False)
    assert tok.chat_template == "{{ bos_token }}{{ messages[0]['content'] }}"
    assert tok.encode("hi[PAD]") == sp_oracle.encode("hi") + [32000]
    assert tok.decode(sp_oracle.encode("hi") + [32000, 32000]) == "hi[PAD][PAD]"


# ----- streaming ----------------------------------------------------------------------------

def stream(tokenizer, ids):
    decoder = tokenizer.stream_decoder()
    pushed = [decoder.push(i) for i in ids]
    return pushed, decoder.flush()


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_stream_decoder_never_splits_a_character(kind, request):
    tok = request.getfixturevalue("smol" if kind == "bpe" else "llama_sp")
    for text in (CHINESE_EMOJI, " " + CHINESE_EMOJI, MIXED):
        ids = tok.encode(text)
        pushed, rest = stream(tok, ids)
        assert not any("\ufffd" in piece for piece in pushed)
        assert "".join(pushed) + rest == tok.decode(ids)
        assert "" in pushed  # some characters did take several tokens


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_stream_decoder_equals_decode_on_random_ids(kind, request):
    """Any id sequence, even one of invalid UTF-8 and special tokens, streams to decode(ids)."""
    tok = request.getfixturevalue("smol" if kind == "bpe" else "llama_sp")
    rng = random.Random(0)
    byte_ids = tok.encode(CHINESE_EMOJI, add_bos=False)  # many partial-character tokens
    special_ids = [tok.bos_id, tok.eos_id]
    for _ in range(50):
        ids = [rng.choice([rng.randrange(tok.vocab_size), rng.choice(byte_ids), rng.choice(special_ids)])
               for _ in range(rng.randrange(1, 30))]
        pushed, rest = stream(tok, ids)
        assert "".join(pushed) + rest == tok.decode(ids), ids


# ----- errors and import cost ----------------------------------------------------------------

def test_not_a_tokenizer_is_a_clear_error(tmp_path):
    text_file = tmp_path / "notes.model"
    text_file.write_text("this is not a SentencePiece model")
    with pytest.raises(ValueError, match="notes.model.*not a SentencePiece model"):
        load_tokenizer(text_file)
    with pytest.raises(ValueError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="missing.gguf: no such file"):
        load_tokenizer(tmp_path / "missing.gguf")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not a readable tokenizer.json"):
        load_tokenizer(tmp_path)


def test_ids_outside_the_vocabulary_are_an_error(smol, llama_sp):
    for tok in (smol, llama_sp):
        with pytest.raises(TokenizerError, match=f"token id {tok.vocab_size} is outside the vocabulary"):
            tok.decode([5, tok.vocab_size])


def test_gguf_metadata_errors():
    with pytest.raises(TokenizerError, match="m.gguf: the GGUF metadata has no tokenizer"):
        Tokenizer.from_gguf_metadata({"general.architecture": "llama"}, source="m.gguf")
    bpe = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
           "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.pre": "no-such-pre"}
    with pytest.raises(TokenizerError, match="pre-tokenizer 'no-such-pre'"):
        Tokenizer.from_gguf_metadata(bpe, source="m.gguf")
    with pytest.raises(TokenizerError, match="'rwkv' is not supported"):
        Tokenizer.from_gguf_metadata(dict(bpe, **{"tokenizer.ggml.model": "rwkv"}), source="m.gguf")
    for merge in ("ab", "a b b", "a c"):   # no space, one too many, a token not in the vocabulary
        bad = dict(bpe, **{"tokenizer.ggml.merges": [merge], "tokenizer.ggml.pre": "gpt2"})
        with pytest.raises(TokenizerError, match="m.gguf: (merge .* is not two tokens|not a usable BPE vocabulary)"):
            Tokenizer.from_gguf_metadata(bad, source="m.gguf")


def test_import_is_cheap():
    """The chat's time to first token: importing the module loads no tokenizer library."""
    code = ("import sys, llama_np.tokenizer.tokenizers, llama_np.tokenizer.templates; "
            "print(sorted(m for m in ('tokenizers', 'sentencepiece', 'jinja2', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "[]"
