"""The README's perplexity table for every type `python -m llama_np.quantize` writes, RTN
and, where calibration applies, calibrated.

    python benchmarks/perplexity_table.py                          # everything, into /tmp/ppl
    python benchmarks/perplexity_table.py --types Q4_K_M,Q5_K_M    # a few rows
    python benchmarks/perplexity_table.py --table-only             # print what was measured

Every file is made from the F32 copy of the default model (`quantize default --type F32`:
the Q4_1 file dequantized exactly, since no unquantized original is in the data mirror),
except the Q4_1 row, which is the default model's own file. Then, one process at a time and
one thread each (`--threads 1`, OMP_NUM_THREADS=1), the README's perplexity settings:

    python -m llama_np.perplexity --model M --corpus alpaca_en|cmrc2018 --n-ctx 512 --chunks 16 --threads 1 --json --quiet

For the 32-weight formats that `quantize --calibration` writes (Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0) the same type is also made with `--calibration calib.txt` (the default method,
importance), calib.txt being the README's recipe ("Calibrated quantization"): the
instructions and inputs of the first 600 alpaca_en examples (not their answers, which the
English perplexity scores) and the first 300 alpaca_zh examples.

bits/weight is computed from the tensor types: the bytes of every tensor's blocks × 8 ÷ the
number of weights (norms included, the file's metadata and tokenizer not); "layers" is the
same without the vocabulary matrix (token_embd, 28 of the 135 million weights, Q8_0 or Q6_K
in every quantized file); file MB is the whole file. Each result is kept in WORK/results.json as soon as it is measured, so an
interrupted run goes on where it stopped (`--fresh` measures again). Work files stay in
--work, never in the repository. `--llama-cpp Q4_K_M,Q6_K` also quantizes those mixes with
llama.cpp's own quantizer and compares the files tensor by tensor. On a 2-core Zen 3 VM a
perplexity run took 32-62 s and the whole table (40 runs, 16 quantizations, the calibrated
ones each reading 16,384 tokens first) about 40 minutes.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter

from bench_env import REPO, commit, machine_description  # first: the checkout on the path
from bench_inference import thread_env
from llama_np.files.atomic import atomic_write_text
from llama_np.quant.gptq import GRIDS

# the README table's rows, in its order: the first four were its rows before the others
TYPES = ("F32", "Q8_0", "Q4_1", "Q4_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0",
         "Q4_K_M", "Q4_K_S", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")
CALIBRATED_TYPES = tuple(GRIDS)          # the formats `quantize --calibration` writes
CORPORA = ("alpaca_en", "cmrc2018")
PERPLEXITY_ARGS = ("--n-ctx", "512", "--chunks", "16", "--threads", "1", "--json", "--quiet")
CALIBRATION_EN_EXAMPLES = 600   # instructions + inputs of the first alpaca_en examples
CALIBRATION_ZH_EXAMPLES = 300   # instructions + outputs of the first alpaca_zh examples


def write_calibration_text(path):
    """The README's calib.txt (section "Calibrated quantization"), 115,094 characters."""
    d = os.path.join(os.environ["LLAMA_NP_DATA"], "hiyouga", "LLaMA-Factory", "data")
    with open(os.path.join(d, "alpaca_en_demo.json"), encoding="utf-8") as f:
        en = json.load(f)[:CALIBRATION_EN_EXAMPLES]
    with open(os.path.join(d, "alpaca_zh_demo.json"), encoding="utf-8") as f:
        zh = json.load(f)[:CALIBRATION_ZH_EXAMPLES]
    text = ("\n\n".join(e["instruction"] + "\n" + e.get("input", "") for e in en) + "\n\n"
            + "\n\n".join(e["instruction"] + "\n" + e["output"] for e in zh))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def run(cmd):
    """Run one tool in its own process with one thread; its stdout."""
    print("$", " ".join(cmd[2:] if cmd[0] == sys.executable else cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(1), cwd=REPO)
    if out.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return out.stdout


def model_path(work, qtype, calibrated):
    """The file of a row: the default model itself for RTN Q4_1, else a file in `work`."""
    if qtype == "Q4_1" and not calibrated:
        from llama_np.files import hub
        return hub.resolve_model("default")
    return os.path.join(work, f"smol.{qtype}{'.imp' if calibrated else ''}.gguf")


def make_model(work, qtype, calibrated):
    """Quantize the row's file from the F32 copy unless it is there already."""
    path = model_path(work, qtype, calibrated)
    if os.path.exists(path):
        return path
    f32 = model_path(work, "F32", False)
    if qtype == "F32":
        cmd = ["default", "--type", "F32"]
    else:
        cmd = [f32, "--type", qtype]
        if calibrated:
            cmd += ["--calibration", os.path.join(work, "calib.txt")]
    run([sys.executable, "-m", "llama_np.quantize", *cmd, "--out", path, "--quiet", "--threads", "1"])
    return path


VOCABULARY_TENSORS = ("token_embd.weight", "output.weight")


def bits_per_weight(infos):
    """The tensors' bytes × 8 ÷ their weights."""
    return sum(t.nbytes for t in infos) * 8 / sum(math.prod(t.shape) for t in infos)


def file_stats(path):
    """(file MB, bits per weight of all tensors, of the layers' tensors alone (without the
    vocabulary matrices), 'type ×count, …') of a GGUF."""
    from llama_np.checkpoint.gguf_file import GGUFFile
    gguf = GGUFFile(path)
    infos = list(gguf.tensors.values())
    layers = [t for t in infos if t.name not in VOCABULARY_TENSORS]
    counts = Counter(t.type_name for t in infos)
    types = ", ".join(f"{name} ×{n}" for name, n in counts.most_common())
    return gguf.n_bytes / 1e6, bits_per_weight(infos), bits_per_weight(layers), types


def measure(results, results_path, work, qtype, calibrated, corpus):
    key = f"{qtype}{' calibrated' if calibrated else ''} {corpus}"
    if key in results:
        return results[key]
    path = make_model(work, qtype, calibrated)
    start = time.perf_counter()
    out = run([sys.executable, "-m", "llama_np.perplexity", "--model", path, "--corpus", corpus,
               *PERPLEXITY_ARGS])
    result = json.loads(out.strip().splitlines()[-1])
    result["seconds"] = round(time.perf_counter() - start, 1)
    results[key] = result
    atomic_write_text(results_path, json.dumps(results, indent=1))
    print(f"{key}: ppl {result['ppl']:.3f} in {result['seconds']} s", file=sys.stderr, flush=True)
    return result


def compare_with_llama_cpp(work, qtype):
    """Quantize the F32 copy with llama.cpp's own quantizer (llama-cpp-python's
    llama_model_quantize, no importance matrix, one thread) and compare it with our file,
    tensor by tensor: one line saying what matched."""
    import filecmp
    import gguf
    import llama_cpp
    from llama_np.checkpoint.type_mix import MIXES
    ours = make_model(work, qtype, False)
    theirs = os.path.join(work, f"smol.{qtype}.llama_cpp.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = MIXES[qtype][0], 1
    if llama_cpp.llama_model_quantize(model_path(work, "F32", False).encode(), theirs.encode(), params):
        raise SystemExit(f"llama.cpp could not quantize to {qtype}")
    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    differ = [name for name in b if name not in a or a[name].tensor_type != b[name].tensor_type
              or bytes(a[name].data.view("uint8")) != bytes(b[name].data.view("uint8"))]
    same_file = filecmp.cmp(ours, theirs, shallow=False)
    return (f"{qtype}: llama.cpp {llama_cpp.__version__} wrote {len(b)} tensors, ours {len(a)}; "
            f"{len(b) - len(differ)} of them the same type and bytes"
            + (f", different: {', '.join(differ[:5])}" if differ else "")
            + ("; the whole file is byte-identical" if same_file else
               "; the files differ outside the tensors (metadata)"))


def ppl_cell(result, error=True):
    """A table cell: the perplexity (± its standard error where measured and wanted), or empty."""
    if not result:
        return ""
    if error and "ppl_error" in result:
        return f"{result['ppl']:.3f} ± {result['ppl_error']:.3f}"
    return f"{result['ppl']:.3f}"


def bpc_cell(result):
    return f"{result['bits_per_char']:.4f}" if result else ""


def table(results, work, types):
    """The markdown table (and one line of tensor types per file) of what was measured."""
    lines = ["| format | file MB | bits/weight | bits/weight, layers | English PPL | English bits/char | English PPL, calibrated "
             "| Chinese PPL | Chinese bits/char | Chinese PPL, calibrated |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for qtype in types:
        en, zh = results.get(f"{qtype} alpaca_en"), results.get(f"{qtype} cmrc2018")
        en_cal, zh_cal = results.get(f"{qtype} calibrated alpaca_en"), results.get(f"{qtype} calibrated cmrc2018")
        path = model_path(work, qtype, False)
        if not os.path.exists(path):
            continue
        mb, bpw, layer_bpw, kinds = file_stats(path)
        notes.append(f"- {qtype}: {kinds}")
        lines.append(f"| {qtype} | {mb:.1f} | {bpw:.2f} | {layer_bpw:.2f} | {ppl_cell(en)} | {bpc_cell(en)} "
                     f"| {ppl_cell(en_cal, error=False)} | {ppl_cell(zh)} | {bpc_cell(zh)} "
                     f"| {ppl_cell(zh_cal, error=False)} |")
    return "\n".join(lines) + "\n\nTensor types:\n" + "\n".join(notes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--work", default="/tmp/ppl", help="folder for the GGUF files, calib.txt and "
                                                      "results.json (default: %(default)s)")
    p.add_argument("--types", default=",".join(TYPES), help="comma-separated rows (default: all)")
    p.add_argument("--corpora", default=",".join(CORPORA), help="comma-separated (default: both)")
    p.add_argument("--no-calibrated", action="store_true", help="only the round-to-nearest files")
    p.add_argument("--fresh", action="store_true", help="measure again what results.json already has")
    p.add_argument("--llama-cpp", default="", metavar="TYPES",
                   help="comma-separated mixes to quantize with llama.cpp's own quantizer too "
                        "(llama-cpp-python) and compare with ours, tensor by tensor")
    p.add_argument("--table-only", action="store_true", help="print the table of what was measured, "
                                                             "run nothing")
    args = p.parse_args(argv)
    types = [t for t in args.types.split(",") if t]
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        p.error(f"unknown --types {', '.join(unknown)}; choose from {', '.join(TYPES)}")
    corpora = [c for c in args.corpora.split(",") if c]
    os.makedirs(args.work, exist_ok=True)
    results_path = os.path.join(args.work, "results.json")
    results = {}
    if os.path.exists(results_path) and not args.fresh:
        with open(results_path) as f:
            results = json.load(f)
    if not args.table_only:
        if not os.path.exists(os.path.join(args.work, "calib.txt")):
            write_calibration_text(os.path.join(args.work, "calib.txt"))
        make_model(args.work, "F32", False)
        # the new rows first, then the calibrated files, then the rows the README had before
        order = [t for t in types if t not in TYPES[:4]] + [t for t in types if t in TYPES[:4]]
        for qtype in order:
            for corpus in corpora:
                measure(results, results_path, args.work, qtype, False, corpus)
            if qtype in CALIBRATED_TYPES and not args.no_calibrated:
                for corpus in corpora:
                    measure(results, results_path, args.work, qtype, True, corpus)
    print(f"{machine_description()}; llama_np {commit()}; perplexity {' '.join(PERPLEXITY_ARGS)}")
    print()
    print(table(results, args.work, [t for t in TYPES if t in types]))
    for qtype in [t for t in args.llama_cpp.split(",") if t]:
        print(compare_with_llama_cpp(args.work, qtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
