"""`python -m llama_np.quantize --type T` for llama.cpp's 5-bit and K-quant file types writes,
tensor by tensor, the types and bytes that llama.cpp's own quantizer
(`llama_cpp.llama_model_quantize`, no importance matrix) writes from the same F32 file; and
the files llama.cpp makes load in llama_np with transformers' logits (transformers
dequantizes the same GGUF with `gguf`).

The tiny models cover the three cases of a mix: rows that are whole 256-weight super-blocks
(with the per-layer promotions of attn_v / ffn_down, and grouped-query attention), rows that
are only whole 32-weight blocks (the K-quants fall back to Q4_0 / Q5_0 / Q5_1 / Q8_0, as on
SmolLM2's 576-wide rows), and rows that are not even that (F16).
"""
import numpy as np
import pytest

from llama_np import quantize
from llama_np.checkpoint import load_model
from llama_np.checkpoint.type_mix import MIXES

from test_llama_cpp_compat import greedy, llama_np_greedy, quantize_to
from test_quantize_cli import save_tiny_bpe_model

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

# name → the shape of a tiny LLaMA (conftest.save_tiny_llama's arguments)
TINY_SHAPES = {
    "superblocks": dict(hidden=256, ffn=256, layers=8, heads=4, kv_heads=1, tied=False),
    "fallback": dict(hidden=160, ffn=256, layers=4, heads=4, kv_heads=2, tied=True),
    "f16_fallback": dict(hidden=48, ffn=256, layers=2, heads=4, kv_heads=2, tied=True),
}
# the file types the issue names: what people download
DOWNLOADED_TYPES = ["Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_0", "Q5_1", "Q5_K_M", "Q6_K"]


def llama_cpp_quantize(source, out, file_type):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = MIXES[file_type][0]
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) == 0
    return str(out)


def tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def assert_same_tensors(ours, theirs):
    ours, theirs = tensors(ours), tensors(theirs)
    assert sorted(ours) == sorted(theirs)
    for name, reference in theirs.items():
        assert ours[name].tensor_type == reference.tensor_type, name
        np.testing.assert_array_equal(np.asarray(ours[name].data).view(np.uint8),
                                      np.asarray(reference.data).view(np.uint8), err_msg=name)


def file_type_of(path):
    return int(gguf.GGUFReader(path).fields["general.file_type"].contents())


def f32_copy(source, out):
    """`python -m llama_np.quantize source --type F32` (exact for an F32 or Q4_1 source)."""
    assert quantize.main([str(source), "--type", "F32", "--out", str(out), "--quiet"]) == 0
    return str(out)


@pytest.fixture(scope="module", params=sorted(TINY_SHAPES))
def tiny_f32(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    save_tiny_bpe_model(folder / "hf", seed=1, **TINY_SHAPES[request.param])
    return request.param, f32_copy(folder / "hf", folder / "tiny.F32.gguf")


@pytest.mark.parametrize("file_type", sorted(MIXES))
def test_every_tensor_is_what_llama_cpp_writes(tiny_f32, file_type, tmp_path, capsys):
    shape_name, f32 = tiny_f32
    if shape_name == "f16_fallback" and file_type not in ("Q2_K", "Q4_K_M", "Q6_K", "Q5_0"):
        pytest.skip("the F16 fallback is the same for every mix: four are enough")
    theirs = llama_cpp_quantize(f32, tmp_path / f"llama_cpp.{file_type}.gguf", file_type)
    ours = quantize_to(f32, file_type, tmp_path / f"llama_np.{file_type}.gguf", capsys)
    assert_same_tensors(ours, theirs)
    assert file_type_of(ours) == file_type_of(theirs) == MIXES[file_type][0]


def transformers_greedy(hf_model, ids, n):
    """n greedy tokens of transformers' model after ids, the end-of-text token included (a
    plain loop: `generate` would stop at it or, with min_new_tokens, mask it)."""
    import torch

    seen = list(ids)

    def next_logits(token):
        seen.extend([] if token is None else [token])
        with torch.no_grad():
            return hf_model(torch.tensor([seen])).logits[0, -1].numpy()
    return greedy(next_logits, n)


@pytest.fixture(scope="module")
def superblocks_f32(tmp_path_factory):
    folder = tmp_path_factory.mktemp("superblocks_run")
    save_tiny_bpe_model(folder / "hf", seed=2, **TINY_SHAPES["superblocks"])
    return f32_copy(folder / "hf", folder / "tiny.F32.gguf")


@pytest.mark.parametrize("file_type", DOWNLOADED_TYPES)
def test_llama_cpp_files_run_as_transformers_runs_them(superblocks_f32, file_type, tmp_path):
    """Logits of every position within 1e-3 of transformers' on the same file, and the same
    greedy continuation."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = llama_cpp_quantize(superblocks_f32, tmp_path / f"tiny.{file_type}.gguf", file_type)
    model, _ = load_model(path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=f"tiny.{file_type}.gguf").eval()
    ids = [5, 17, 42, 99, 3, 250, 8, 64]
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits[0].numpy()        # [T, V]
    assert np.max(np.abs(model.forward(ids) - expected)) < 1e-3
    assert llama_np_greedy(model, ids, 12) == transformers_greedy(hf_model, ids, 12)


@pytest.fixture(scope="module")
def real_f32(real_model_path, tmp_path_factory):
    return f32_copy(real_model_path, tmp_path_factory.mktemp("real") / "smollm2.F32.gguf")


@pytest.mark.slow
@pytest.mark.parametrize("file_type", DOWNLOADED_TYPES)
def test_real_model_mixes_are_what_llama_cpp_writes(real_f32, file_type, tmp_path, capsys):
    """SmolLM2-135M: its F32 copy (exact from the Q4_1 file) quantized by both; 576-wide rows,
    so every K-quant file is a real mix with 32-weight fallbacks."""
    theirs = llama_cpp_quantize(real_f32, tmp_path / f"llama_cpp.{file_type}.gguf", file_type)
    ours = quantize_to(real_f32, file_type, tmp_path / f"llama_np.{file_type}.gguf", capsys)
    assert_same_tensors(ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("file_type", ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M"])
def test_real_model_llama_cpp_files_run_as_transformers_runs_them(real_f32, file_type, tmp_path):
    """SmolLM2-135M quantized by llama.cpp (between them these four files hold Q3_K, Q4_K,
    Q5_K, Q6_K, Q4_0, Q5_0, Q5_1 and Q8_0 tensors): llama_np's logits of every position
    within 1e-3 of transformers' on the same file, and the same 24 greedy tokens."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    name = f"smollm2.{file_type}.gguf"
    path = llama_cpp_quantize(real_f32, tmp_path / name, file_type)
    model, tokenizer = load_model(path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=name).eval()
    ids = tokenizer.encode("The capital of France is")
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits[0].numpy()        # [T, V]
    assert np.max(np.abs(model.forward(ids) - expected)) < 1e-3
    assert llama_np_greedy(model, ids, 24) == transformers_greedy(hf_model, ids, 24)
