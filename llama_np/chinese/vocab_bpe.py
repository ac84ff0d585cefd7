"""Extending a byte-level BPE vocabulary with Chinese tokens, by continuing BPE training.

The default model (SmolLM2) tokenizes with byte-level BPE: a word's UTF-8 bytes are merged
pair by pair, in the order of a learned merge list. Its 48,900 merges were learned on
English, so a Chinese character — three bytes — usually stays two or three tokens
(1.74 tokens per character on the cmrc2018 Wikipedia text). Chinese-LLaMA's remedy (append
a Chinese SentencePiece vocabulary; llama_np.chinese.vocab_sentencepiece) has a BPE twin: *keep
training the same BPE on Chinese text*, starting from where the original merges leave it.

    1. Cut the Chinese training text into words with the model's own pre-tokenizer, and
       tokenize each word with the model's own merges. This is where the old vocabulary
       leaves Chinese: e.g. 战国 → "æĪ" "ĺ" "åĽ" "½" (byte stand-ins, see below).
    2. Count adjacent token pairs over all words (weighted by word frequency); append the
       most frequent pair as a new merge (its concatenation a new token, unless it is one
       already); apply it everywhere; repeat until `n_new_tokens` tokens are new, or no
       pair occurs `min_frequency` times.

New merges rank after all old ones, and BPE always applies the lowest-ranked applicable
merge first, so a word is first merged exactly as before; only then can new merges join
what the old ones left. Step 2 considers only pairs whose joined bytes include one ≥ 0x80
(a non-ASCII character), so on ASCII text no new merge can ever apply: English, code and
digits tokenize exactly as before, with the same ids. New tokens get ids after the old ones
(old ids keep their meaning, so old embedding rows stay valid). And because every byte
still has a token, any text still encodes, and decodes back exactly.

Byte-level BPE writes bytes with 256 printable stand-in characters (GPT-2's table): the
printable ASCII and Latin-1 bytes stand for themselves, the other 68 (controls, space,
0x7F–0xA0, 0xAD) are moved to U+0100 onwards, in byte order: a space is "Ġ" (U+0120),
a newline "Ċ", and 中 (E4 B8 AD) is "ä¸Ń". Vocabulary entries and merges are written in
these characters, both in `tokenizer.json` and in GGUF.
"""
import heapq
import os
from collections import Counter, defaultdict
from dataclasses import dataclass

from llama_np.tokenizer.tokenizers import TOKEN_NORMAL, Tokenizer, hf_backend

# About halves the tokens Chinese text needs, and smaller extensions scored worse in the
# recipe (docs/benchmarks.md#recipe; notebook 04 measures other sizes).
DEFAULT_NEW_TOKENS = 4_000
DEFAULT_MIN_FREQUENCY = 2    # a pair seen once is memorizing the corpus, not learning Chinese
FIRST_NON_ASCII_BYTE = 0x80


class VocabularyError(ValueError):
    """A base tokenizer that cannot be extended this way, or nothing to learn from."""


# ----- GPT-2's byte ↔ stand-in character table ----------------------------------------------

def _byte_symbols():
    """The 256 stand-in characters, indexed by byte value."""
    kept = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    symbols, moved = [], 0
    for byte in range(256):
        if byte in kept:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + moved))
            moved += 1
    return symbols


BYTE_SYMBOLS = _byte_symbols()
SYMBOL_BYTES = {symbol: byte for byte, symbol in enumerate(BYTE_SYMBOLS)}


def token_bytes(token):
    """The bytes a byte-level token stands for: "ä¸Ń" → b"\\xe4\\xb8\\xad" (中)."""
    return bytes(SYMBOL_BYTES[c] for c in token)


def readable_token(token):
    """A byte-level token as a person reads it: the text its bytes spell, with a space
    shown as "▁" and a newline as "\\n"; or, for a token holding only part of a character,
    its bytes in hex: "ä¸Ń" → "中", "Ġthe" → "▁the", "ä¸" → "<E4 B8>"."""
    raw = token_bytes(token)
    try:
        return raw.decode("utf-8").replace(" ", "\u2581").replace("\n", "\\n")
    except UnicodeDecodeError:
        return "<" + " ".join(f"{b:02X}" for b in raw) + ">"


def _has_non_ascii_byte(token):
    return any(SYMBOL_BYTES[c] >= FIRST_NON_ASCII_BYTE for c in token)


# ----- learning new merges -----------------------------------------------------------------

@dataclass(frozen=True)
class BPEExtension:
    """What continued training adds to a base vocabulary of `base_size` tokens:
    `tokens[k]` gets id base_size + k; `merges` (pairs of token strings) rank after all the
    base merges, in this order."""
    base_size: int
    tokens: tuple
    merges: tuple


def learn_extension(base_metadata, texts, n_new_tokens=DEFAULT_NEW_TOKENS,
                    min_frequency=DEFAULT_MIN_FREQUENCY):
    """Continue training the byte-level BPE in `base_metadata` (a GGUF metadata dict with
    `tokenizer.ggml.model = "gpt2"`) on `texts`, adding up to `n_new_tokens` tokens.
    Returns a BPEExtension. Only merges whose result holds a non-ASCII byte are learned.
    """
    if base_metadata.get("tokenizer.ggml.model") != "gpt2":
        raise VocabularyError("BPE extension needs a byte-level BPE tokenizer (tokenizer.ggml.model = 'gpt2'); "
                              "for SentencePiece use llama_np.merge_tokenizer")
    backend = hf_backend(Tokenizer.from_gguf_metadata(base_metadata))
    word_counts = Counter(word for text in texts for word, _ in backend.pre_tokenizer.pre_tokenize_str(text))
    if not word_counts:
        raise VocabularyError("the training corpus is empty (no text to learn from)")
    # step 1: each word as the base merges leave it (only words with non-ASCII bytes matter)
    words, counts = [], []
    for word, count in word_counts.items():
        if _has_non_ascii_byte(word):
            words.append([token.value for token in backend.model.tokenize(word)])
            counts.append(count)
    vocab = set(base_metadata["tokenizer.ggml.tokens"])
    merges = {tuple(merge.split(" ")) for merge in base_metadata["tokenizer.ggml.merges"]}
    new_tokens, new_merges = _continue_bpe(words, counts, vocab, merges, n_new_tokens, min_frequency)
    return BPEExtension(len(base_metadata["tokenizer.ggml.tokens"]), tuple(new_tokens), tuple(new_merges))


def _continue_bpe(words, counts, vocab, merges, n_new_tokens, min_frequency):
    """Step 2, the BPE training loop, on `words` (lists of tokens, changed in place) seen
    `counts` times; `vocab` and `merges` (sets, extended in place) are what exists already.
    A pair that is a merge already is never learned twice: if it shows up next to a new
    token, BPE applies the existing merge there anyway.

    The classic loop recounts every pair after every merge; this one keeps, for each
    eligible pair, its total count and the words it occurs in, so a merge visits only the
    words that contain it and changes only the counts next to each occurrence: joining
    (a, b) in "x a b y" removes (x, a), (a, b), (b, y) and adds (x, ab), (ab, y). A heap of
    (-count, pair) finds the most frequent pair; entries whose count has changed since they
    were pushed are skipped when they come up. Ties go to the pair that sorts first, so the
    result never depends on dict order.
    """
    non_ascii = {token: _has_non_ascii_byte(token) for token in set().union(*words)}
    pair_counts = Counter()
    pair_words = defaultdict(set)  # pair → words it occurs in (or once did: visiting those is harmless)
    for w, tokens in enumerate(words):
        for pair in zip(tokens, tokens[1:]):
            if non_ascii[pair[0]] or non_ascii[pair[1]]:
                pair_counts[pair] += counts[w]
                pair_words[pair].add(w)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    new_tokens, new_merges = [], []
    while heap and len(new_tokens) < n_new_tokens:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair) != -negative_count:
            continue  # stale entry
        if -negative_count < min_frequency:
            break
        if pair in merges:
            continue
        joined = pair[0] + pair[1]
        merges.add(pair)
        new_merges.append(pair)
        non_ascii[joined] = True  # it holds the non-ASCII byte of pair[0] or pair[1]
        if joined not in vocab:
            vocab.add(joined)
            new_tokens.append(joined)
        delta = Counter()  # change of each pair's count caused by this merge
        for w in pair_words.pop(pair):
            word_delta = Counter()
            words[w] = _apply_merge(words[w], pair, joined, word_delta, counts[w])
            for changed, change in word_delta.items():
                delta[changed] += change
                if change > 0:
                    pair_words[changed].add(w)
        del pair_counts[pair]
        for changed, change in delta.items():
            if changed != pair and change and (non_ascii[changed[0]] or non_ascii[changed[1]]):
                pair_counts[changed] += change
                heapq.heappush(heap, (-pair_counts[changed], changed))
    return new_tokens, new_merges


def _apply_merge(tokens, pair, joined, delta, weight):
    """`tokens` with every occurrence of the adjacent `pair`, left to right, joined; adds
    to `delta` how the word's pair counts change, times `weight` (the word's count)."""
    first, second = pair
    merged, start = [], 0
    while True:
        try:
            i = tokens.index(first, start)  # the next candidate, found at C speed
        except ValueError:
            return merged + tokens[start:]
        merged += tokens[start:i]
        if i + 1 < len(tokens) and tokens[i + 1] == second:
            if merged:                      # (x, a) becomes (x, ab)
                delta[merged[-1], first] -= weight
                delta[merged[-1], joined] += weight
            if i + 2 < len(tokens):         # (b, y) becomes (ab, y)
                delta[second, tokens[i + 2]] -= weight
                delta[joined, tokens[i + 2]] += weight
            merged.append(joined)
            start = i + 2
        else:
            merged.append(first)
            start = i + 1


# ----- saving the extended tokenizer -------------------------------------------------------

def extended_metadata(base_metadata, extension):
    """A copy of `base_metadata` (GGUF metadata) with the extension appended: new tokens
    (type NORMAL) after the old ones, new merges after the old ones, and `llama.vocab_size`
    (if present) raised to match. Write it with `gguf.GGUFWriter` alongside the resized
    model's tensors; llama_np, llama.cpp and transformers read the tokenizer from it."""
    tokens = base_metadata["tokenizer.ggml.tokens"]
    if len(tokens) != extension.base_size:
        raise VocabularyError(f"the extension was learned for a vocabulary of {extension.base_size} tokens, "
                              f"not {len(tokens)}")
    meta = dict(base_metadata)
    meta["tokenizer.ggml.tokens"] = list(tokens) + list(extension.tokens)
    meta["tokenizer.ggml.token_type"] = (list(base_metadata["tokenizer.ggml.token_type"])
                                         + [TOKEN_NORMAL] * len(extension.tokens))
    meta["tokenizer.ggml.merges"] = (list(base_metadata["tokenizer.ggml.merges"])
                                     + [f"{a} {b}" for a, b in extension.merges])
    architecture = meta.get("general.architecture", "llama")
    if f"{architecture}.vocab_size" in meta:
        meta[f"{architecture}.vocab_size"] = len(meta["tokenizer.ggml.tokens"])
    return meta


def extend_tokenizer(model_path, documents, out_dir, n_new_tokens=DEFAULT_NEW_TOKENS,
                     min_frequency=DEFAULT_MIN_FREQUENCY):
    """The vocabulary extension step: learn up to `n_new_tokens` BPE merges from `documents`
    on top of the byte-level BPE tokenizer of the GGUF model `model_path`, and write the
    extended tokenizer into `out_dir` (tokenizer.json, tokenizer_config.json and the
    vocabulary-only tokenizer.gguf). Returns (the BPEExtension, the extended metadata)."""
    # imported here: they bring in NumPy, and `extend_bpe --help` reads this module's defaults
    from llama_np.checkpoint.gguf_file import GGUFFile
    from llama_np.checkpoint.tokenizer_files import save_hf_tokenizer, write_tokenizer_gguf

    if os.path.isdir(model_path):
        raise ValueError(f"{model_path}: give a .gguf file (its tokenizer metadata is what gets extended)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} exists and is not a folder")
    base = GGUFFile(model_path).metadata
    extension = learn_extension(base, documents, n_new_tokens, min_frequency)
    metadata = extended_metadata(base, extension)
    save_hf_tokenizer(metadata, out_dir)
    write_tokenizer_gguf(metadata, os.path.join(out_dir, "tokenizer.gguf"))
    return extension, metadata


def extension_summary(extension, metadata, documents, out_dir):
    """What extend_tokenizer learnt and wrote, in two lines."""
    return (f"learned {len(extension.merges)} merges, {len(extension.tokens)} new tokens, from "
            f"{len(documents)} documents ({sum(map(len, documents))} characters)\n"
            f"wrote {out_dir}: tokenizer.json, tokenizer_config.json, tokenizer.gguf "
            f"({extension.base_size} + {len(extension.tokens)} = {len(metadata['tokenizer.ggml.tokens'])} tokens)")
