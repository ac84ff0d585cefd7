"""Chinese text for vocabulary extension, pre-training and evaluation, from the data mirror
(docs/data.md#the-files), with a fixed training / held-out split.

Two sources, read as *documents* (one str each), make the Chinese corpus:

- **cmrc2018** (`ymcui/cmrc2018/squad-style-data/cmrc2018_dev.json`): 848 paragraphs of
  Chinese Wikipedia (432,093 characters), the `context` fields of a SQuAD-style
  reading-comprehension file; the questions and answers are not used. This is "the Chinese
  Wikipedia text" every tokenizer ratio in llama_np is measured on.
- **Song ci** (`chinese-poetry/chinese-poetry/宋词/宋词三百首.json`): 280 poems of the Song
  dynasty; a document is one poem, its lines joined by newlines.

Two more sources are extra pre-training text, used only when asked for (`sources=`): the
mirror holds no other Chinese prose, and the recipe's stage 2 runs out of text long before
it runs out of steps (the paper's read 20 GB; the corpus above is 1.2 MB):

- **cmrc2018 questions**: document i is the questions about paragraph i (one per line,
  2,908 of them for the training paragraphs). Aligned with the paragraphs, so the split
  below holds out exactly the questions about held-out paragraphs, which quote them.
- **alpaca_zh** (`hiyouga/LLaMA-Factory/data/alpaca_zh_demo.json`): the 1,000 instruction
  examples as plain text (instruction, input, output on their own lines; 217,133
  characters), the instruction-tuning data read as running text.

The split. Document i of a source (in file order, counting from 0) is *held out* when
`i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1` — documents 9, 19, 29, … — and is *training*
text otherwise: 84 of the 848 paragraphs and 28 of the 280 poems are held out. Taking every
tenth document spreads the held-out text over the whole file (its topics follow the file's
order), needs no random seed, and cannot change unless the file does, which its sha256
rules out. Whatever learns from text — a new vocabulary, pre-training — reads only
`part="train"`; bits-per-character evaluation reads `part="held_out"`.

Users' own corpora are plain UTF-8 text files, one document per line (`read_text_file`).
"""
import json

from llama_np.files import hub
from llama_np.files.atomic import atomic_write_text
from llama_np.files.text import read_json, read_utf8

CMRC2018_FILE = "ymcui/cmrc2018/squad-style-data/cmrc2018_dev.json"
SONG_CI_FILE = "chinese-poetry/chinese-poetry/宋词/宋词三百首.json"
ALPACA_ZH_FILE = "hiyouga/LLaMA-Factory/data/alpaca_zh_demo.json"

HELD_OUT_EVERY = 10  # one document in ten is held out: indices 9, 19, 29, …
PARTS = ("train", "held_out", "all")
SOURCES = ("cmrc2018", "song_ci")                            # the Chinese corpus
EXTRA_SOURCES = ("cmrc2018_questions", "alpaca_zh")          # more pre-training text, on request


class CorpusError(ValueError):
    """A corpus that cannot be used: unreadable, not UTF-8, empty, or not in the expected form."""


# ----- the mirror's sources ---------------------------------------------------------------

def cmrc2018_paragraphs(path=None):
    """The 848 Wikipedia paragraphs of cmrc2018's dev set, in file order."""
    return _from_cmrc2018(path, lambda paragraph: paragraph["context"])


def cmrc2018_questions(path=None):
    """For each of the 848 paragraphs, in file order, its questions one per line."""
    return _from_cmrc2018(path, lambda paragraph: "\n".join(qa["question"] for qa in paragraph["qas"]))


def _from_cmrc2018(path, text_of):
    """text_of(paragraph) for each paragraph of a SQuAD-style file, in file order."""
    path = path or hub.data_path(CMRC2018_FILE)
    data = read_json(path, CorpusError, "the corpus")
    try:
        return [text_of(paragraph) for article in data["data"] for paragraph in article["paragraphs"]]
    except (KeyError, TypeError) as e:
        raise CorpusError(f"{path}: not a SQuAD-style file (data → paragraphs → context, qas → question; "
                          f"missing {e})") from None


def song_ci_poems(path=None):
    """The 280 poems of 宋词三百首, in file order, each its lines joined by newlines."""
    path = path or hub.data_path(SONG_CI_FILE)
    poems = read_json(path, CorpusError, "the corpus")
    try:
        return ["\n".join(poem["paragraphs"]) for poem in poems]
    except (KeyError, TypeError) as e:
        raise CorpusError(f"{path}: not a chinese-poetry file (a list of poems with 'paragraphs'; "
                          f"missing {e})") from None


def alpaca_zh_texts(path=None):
    """The 1,000 examples of alpaca_zh_demo.json, in file order, each as its instruction,
    input (when there is one) and output on their own lines."""
    from llama_np.training.data import DataError, read_alpaca
    try:
        records = read_alpaca(path or hub.data_path(ALPACA_ZH_FILE))
    except DataError as e:
        raise CorpusError(f"not an Alpaca file: {e}") from None
    return ["\n".join(part for part in (record["instruction"], record["input"], record["output"]) if part)
            for record in records]


def split(documents, part):
    """The `part` ("train", "held_out" or "all") of a source's documents (see the module
    docstring for the rule)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")
    if part == "all":
        return list(documents)
    held_out = part == "held_out"
    return [doc for i, doc in enumerate(documents) if (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == held_out]


def chinese_documents(part="train", sources=SOURCES):
    """The documents of `sources` (SOURCES, EXTRA_SOURCES) in the given part, source by
    source: the Chinese text llama_np learns from (part="train") and evaluates on
    (part="held_out")."""
    readers = {"cmrc2018": cmrc2018_paragraphs, "song_ci": song_ci_poems,
               "cmrc2018_questions": cmrc2018_questions, "alpaca_zh": alpaca_zh_texts}
    unknown = unknown_sources(sources)
    if unknown:
        raise ValueError(f"unknown corpus source {unknown[0]!r}; known: {', '.join(SOURCES + EXTRA_SOURCES)}")
    return [doc for source in sources for doc in split(readers[source](), part)]


def unknown_sources(sources):
    """The names in `sources` that are neither SOURCES nor EXTRA_SOURCES."""
    return [name for name in sources if name not in SOURCES + EXTRA_SOURCES]


# ----- plain text files -------------------------------------------------------------------

def read_text_file(path):
    """The non-blank lines of a UTF-8 text file, one document each (line ends removed).

    Raises CorpusError naming the file when it cannot be read, is not UTF-8 (with the line
    of the first bad byte), or holds no text at all.
    """
    text = read_utf8(path, CorpusError, "the corpus")
    return [line for line in text.splitlines() if line.strip()]


def read_text_files(paths):
    """The documents of several text files (read_text_file's), file after file: what the
    tokenizer tools' repeatable --corpus FILE reads."""
    return [line for path in paths for line in read_text_file(path)]


def write_text_file(documents, path):
    """Write documents one per line (a document's own line breaks stay, so it may take
    several lines), atomically."""
    atomic_write_text(path, "".join(doc.rstrip("\n") + "\n" for doc in documents))


# The built-in evaluation texts of the perplexity tool: English for contrast, Chinese held out.
ALPACA_EN_FILE = "hiyouga/LLaMA-Factory/data/alpaca_en_demo.json"
EVALUATION_TEXTS = ("alpaca_en", "cmrc2018")
DOCUMENT_SEPARATOR = "\n\n"


def evaluation_text(name):
    """The built-in evaluation text `name` (one of EVALUATION_TEXTS), documents joined by blank lines."""
    if name == "alpaca_en":
        path = hub.data_path(ALPACA_EN_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                documents = [example["output"] for example in json.load(f)]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not an Alpaca JSON list with 'output' fields ({e})") from None
    else:
        documents = chinese_documents("held_out", sources=("cmrc2018",))
    return DOCUMENT_SEPARATOR.join(documents)
