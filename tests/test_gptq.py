"""Calibrated quantization: GPTQ (`llama_np.quant.gptq`), importance-weighted rounding
(`llama_np.quant.importance`) and the inputs both learn from (`llama_np.checkpoint.calibration`),
through `python -m llama_np.quantize --calibration`.

Oracles: gguf.quants.dequantize reads the blocks GPTQ writes (they must be ordinary blocks,
decoding to exactly the weights GPTQ says it chose); the objective itself, ‖X Wᵀ − X Ŵᵀ‖²
computed here in float64 from the inputs X, against llama.cpp-identical RTN blocks; the
Hessian against layer 0's input computed from the embedding and the norm directly;
llama.cpp runs the calibrated file."""
import numpy as np
import pytest

from llama_np import ops, quant
from llama_np.checkpoint import load_model
from llama_np.checkpoint.calibration import input_hessians
from llama_np.checkpoint.gguf import load_gguf
from llama_np.quant.gptq import GRIDS, gptq_quantize
from llama_np.quant.importance import importance_quantize

from test_quantize_cli import CORPUS, run_cli, save_tiny_bpe_model

gguf = pytest.importorskip("gguf")


def correlated_inputs(n_tokens, width, seed=0):
    """Activations with correlated features and a few large ones, as a transformer's are."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((width, width)) * 0.3 + np.eye(width)
    x = rng.standard_normal((n_tokens, width)) @ mixing
    x[:, rng.integers(0, width, 4)] *= 8
    return x.astype(np.float32)                                              # [N, in]


def output_error(x, w, w_hat):
    return float(np.sum(np.square(x.astype(np.float64) @ (w.astype(np.float64) - w_hat).T)))


@pytest.mark.parametrize("qtype", sorted(GRIDS))
@pytest.mark.parametrize("rows, cols", [(1, 32), (7, 160), (96, 256)])
def test_gptq_blocks_are_ordinary_blocks_with_less_output_error_than_rtn(qtype, rows, cols):
    x = correlated_inputs(4 * cols, cols)
    w = (np.random.default_rng(1).standard_normal((rows, cols)) * 0.05).astype(np.float32)
    blocks, w_hat = gptq_quantize(w, x.astype(np.float64).T @ x, qtype)
    decoded = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype]).reshape(rows, cols)
    np.testing.assert_array_equal(decoded, w_hat)
    rtn = quant.dequantize(quant.quantize(w, qtype), qtype)
    assert output_error(x, w, w_hat) < 0.8 * output_error(x, w, rtn)
    # it buys that with larger weight errors: it is the outputs that are kept
    assert np.sum(np.square(w - w_hat)) > np.sum(np.square(w - rtn))


@pytest.mark.parametrize("qtype", sorted(GRIDS))
def test_importance_blocks_are_ordinary_blocks_with_less_weighted_error_than_rtn(qtype):
    """Σ_j E[x_j²] (w_j − ŵ_j)² — the output error if inputs were uncorrelated — below RTN's,
    computed here from the weights and the importances themselves."""
    x = correlated_inputs(1024, 256)
    importance = np.mean(np.square(x.astype(np.float64)), axis=0)                # [in]
    w = (np.random.default_rng(3).standard_normal((40, 256)) * 0.05).astype(np.float32)
    blocks, w_hat = importance_quantize(w, importance, qtype)
    decoded = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype]).reshape(w.shape)
    np.testing.assert_array_equal(decoded, w_hat)
    rtn = quant.dequantize(quant.quantize(w, qtype), qtype)
    weighted = lambda a: float(np.sum(importance * np.square(w.astype(np.float64) - a)))
    assert weighted(w_hat) < 0.9 * weighted(rtn)
    assert output_error(x, w, w_hat) < output_error(x, w, rtn)


def test_inputs_that_never_occur_cost_nothing():
    """A column whose input is always 0 (H_jj = 0) gets weight 0, and the rest still fits."""
    x = correlated_inputs(512, 64)
    x[:, 10] = 0.0
    w = (np.random.default_rng(2).standard_normal((8, 64)) * 0.05).astype(np.float32)
    _, w_hat = gptq_quantize(w, x.astype(np.float64).T @ x, "Q4_0")
    assert np.all(np.isfinite(w_hat)) and np.all(w_hat[:, 10] == 0)


def test_gptq_refuses_what_it_cannot_write():
    w = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="GPTQ"):
        gptq_quantize(w, np.eye(64), "Q4_K")
    with pytest.raises(ValueError, match="Hessian"):
        gptq_quantize(w, np.eye(32), "Q4_0")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gptq_tiny")
    save_tiny_bpe_model(folder, tied=False)
    return str(folder)


def test_the_hessian_of_layer_0_is_that_of_its_normed_embeddings(tiny_folder):
    """q, k, v of layer 0 read rmsnorm(embedding rows of the tokens): H = xᵀ x of exactly that."""
    model, tokenizer = load_model(tiny_folder, use_kernels=False)
    ids = tokenizer.encode(" ".join(CORPUS))
    hessians = input_hessians(model, ids, ctx=8)
    w = model.weights
    x, _ = ops.rmsnorm_forward(quant.dense(w["model.embed_tokens.weight"])[ids],
                               w["model.layers.0.input_layernorm.weight"], model.config.rms_norm_eps)
    expected = x.astype(np.float64).T @ x.astype(np.float64)
    for key in ("q_proj", "k_proj", "v_proj"):
        np.testing.assert_allclose(hessians[f"model.layers.0.self_attn.{key}.weight"], expected, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max())   # float32 products per window
    assert len(hessians) == 7 * model.config.num_hidden_layers
    assert not hasattr(model, "project") or "project" not in vars(model)          # the hook is gone


def test_calibrated_file_is_closer_to_the_float_model_and_runs_in_llama_cpp(tiny_folder, tmp_path, capsys):
    text = tmp_path / "calibration.txt"
    text.write_text("\n".join(CORPUS * 20), encoding="utf-8")
    paths = {}
    for name, extra in [("rtn", []), ("gptq", ["--calibration", str(text), "--calibration-method", "gptq"]),
                        ("importance", ["--calibration", str(text)])]:
        paths[name] = str(tmp_path / f"{name}.gguf")
        code, err = run_cli([tiny_folder, "--type", "Q4_0", "--out", paths[name]] + extra, capsys)
        assert code == 0, err
    float_model, tokenizer = load_model(tiny_folder)
    ids = tokenizer.encode(" ".join(reversed(CORPUS)))            # not the calibration's order
    reference = float_model.forward(ids)
    errors = {name: float(np.mean(np.square(load_model(path)[0].forward(ids) - reference)))
              for name, path in paths.items()}
    assert errors["gptq"] < errors["rtn"] and errors["importance"] < errors["rtn"], errors
    _, weights, _ = load_gguf(paths["gptq"])
    assert weights["model.layers.0.mlp.down_proj.weight"].qtype == "Q4_0"
    assert weights["model.embed_tokens.weight"].qtype == "Q8_0"      # the vocabulary: RTN, as always

    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=paths["gptq"], n_ctx=128, n_batch=128, n_threads=1, logits_all=True,
                          verbose=False)
    llm.eval(ids)
    theirs = np.array(llm.scores[:len(ids)])
    ours = load_model(paths["gptq"])[0].forward(ids)
    assert np.abs(theirs - ours).mean() / ours.std() < 0.05         # as for any Q4_0 file


def test_bad_calibration_input_says_why(tiny_folder, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café crème".encode("latin-1"))
    out = tmp_path / "out.gguf"
    for extra, message in [(["--calibration", str(empty)], "calibration text is empty"),
                           (["--calibration", str(latin1)], "UTF-8"),
                           (["--calibration", str(tmp_path / "missing.txt")], "missing.txt"),
                           (["--calibration", str(empty), "--type", "Q4_K_M"], "GPTQ")]:
        argv = [tiny_folder, "--out", str(out)] + (extra if "--type" in extra else ["--type", "Q4_0"] + extra)
        code, err = run_cli(argv, capsys)
        assert code == 1 and message in err and err.count("\n") == 1, err
        assert not out.exists()
