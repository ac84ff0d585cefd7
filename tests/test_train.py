"""The training loop: AdamW, schedule and clipping against torch; gradient accumulation;
exact resume; Ctrl-C saving; atomic checkpoints. Tiny models, a few seconds in all."""
import json
import os
import signal

import numpy as np
import pytest

from llama_np.kernels import native
from llama_np.llama import adapter as lora
from llama_np.training import trainer as train
from llama_np.training.data import BatchSchedule, Example
from llama_np.training.trainable import TrainableLlama

from test_lora import tiny_config, tiny_weights


def tiny_run(tmp_path, rng_seed=0, steps=20, grad_accum=2, dropout=0.1, save_every=0, **cfg):
    rng = np.random.default_rng(rng_seed)
    config = tiny_config()
    weights = tiny_weights(config, rng, np.float32)
    lora_config = lora.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=list(lora.PROJECTIONS),
                                  modules_to_save=["lm_head"])
    adapter = lora.Adapter.init(config, weights, lora_config, np.random.default_rng(1))
    examples = []
    for n in rng.integers(4, 12, 10):
        ids = rng.integers(3, config.vocab_size, n)
        labels = ids.copy()
        labels[:2] = -100
        examples.append(Example(ids, labels))
    batches = BatchSchedule(examples, batch_size=3, pad_id=0, seed=5)
    settings = dict(lr=1e-2, steps=steps, grad_accum=grad_accum, warmup_steps=3, save_every=save_every)
    settings.update(cfg)
    trainer = train.Trainer(TrainableLlama(config, weights, adapter), batches, train.TrainConfig(**settings),
                            tmp_path, progress=False)
    return trainer


@pytest.mark.parametrize("use_kernels", [False, True])
def test_adamw_matches_torch(use_kernels):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p = rng.standard_normal((4, 3)).astype(np.float32)
    grads = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(5)]
    ours = {"w": p.copy()}
    opt = train.AdamW(ours, weight_decay=0.1, use_kernels=use_kernels)
    tp = torch.nn.Parameter(torch.tensor(p))
    topt = torch.optim.AdamW([tp], lr=1e-2, weight_decay=0.1)
    for g in grads:
        opt.step(ours, {"w": g.copy()}, lr=1e-2)
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(ours["w"], tp.detach().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("use_kernels", [False, True])
def test_adamw_lr_scales_match_torch_param_groups(use_kernels):
    """--embedding-lr: a parameter with its own learning rate is torch's second param group."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    start = {"w": rng.standard_normal((4, 3)).astype(np.float32), "e": rng.standard_normal((5, 3)).astype(np.float32)}
    ours = {k: v.copy() for k, v in start.items()}
    opt = train.AdamW(ours, lr_scales={"e": 0.1}, use_kernels=use_kernels)
    tw, te = (torch.nn.Parameter(torch.tensor(start[k])) for k in ("w", "e"))
    topt = torch.optim.AdamW([{"params": [tw], "lr": 1e-2}, {"params": [te], "lr": 1e-3}], weight_decay=0.0)
    for _ in range(4):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in start.items()}
        opt.step(ours, {k: g.copy() for k, g in grads.items()}, lr=1e-2)
        tw.grad, te.grad = torch.tensor(grads["w"]), torch.tensor(grads["e"])
        topt.step()
    np.testing.assert_allclose(ours["w"], tw.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours["e"], te.detach().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not native.AVAILABLE, reason="C kernels not built")
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_adamw_kernel_equals_the_numpy_form_bit_for_bit(threads):
    """The C AdamW (one pass) against the NumPy form (a pass per operation): the same floats
    after 4 steps, for sizes below, at and past the 8-lane loop and the threads' spans, with
    weight decay, a learning-rate scale, rows that do not train, and gradients up to 1e4."""
    rng = np.random.default_rng(7)
    shapes = {"one": (1,), "seven": (7,), "eight": (8,), "odd": (3, 11), "big": (611, 577)}   # 352,547 elements
    start = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}
    masks = {"odd": np.array([True, False, True])}
    previous = native.get_num_threads()
    native.set_num_threads(threads)
    try:
        runs = []
        for use_kernels in (False, True):
            params = {k: v.copy() for k, v in start.items()}
            opt = train.AdamW(params, weight_decay=0.05, row_masks=masks, lr_scales={"big": 0.3},
                              use_kernels=use_kernels)
            step_rng = np.random.default_rng(8)
            for step in range(4):
                grads = {k: (step_rng.standard_normal(v.shape) * 10.0 ** step_rng.integers(-6, 5, v.shape)
                             ).astype(np.float32) for k, v in start.items()}
                grads["odd"][~masks["odd"]] = 0            # as TrainableLlama leaves frozen rows
                opt.step(params, grads, lr=3e-3 * (step + 1))
            runs.append((params, opt.m, opt.v))
    finally:
        native.set_num_threads(previous)
    for numpy_arrays, kernel_arrays in zip(*runs):
        for name in shapes:
            np.testing.assert_array_equal(kernel_arrays[name], numpy_arrays[name], err_msg=name)
    assert not np.array_equal(runs[0][0]["big"], start["big"])


def test_learning_rate_schedules_match_transformers():
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    for name, make in [("cosine", transformers.get_cosine_schedule_with_warmup),
                       ("linear", transformers.get_linear_schedule_with_warmup)]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
        sched = make(opt, num_warmup_steps=4, num_training_steps=30)
        for step in range(30):
            assert train.learning_rate(step, 3e-4, 30, 4, name) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
            opt.step()
            sched.step()


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads.values()]
    for p, g in zip(params, grads.values()):
        p.grad = torch.tensor(g)
    expected_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
    assert train.clip_grad_norm(grads, 1.0) == pytest.approx(expected_norm, rel=1e-6)
    for p, g in zip(params, grads.values()):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-6)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """2 micro-batches of 3 accumulate to the gradient of the mean over all 6 examples."""
    trainer = tiny_run(tmp_path, dropout=0.0)
    model, batches = trainer.model, trainer.batches
    micro = [batches.micro_batch(0), batches.micro_batch(1)]
    total = sum(int(np.sum(l[:, 1:] != -100)) for _, l in micro)
    summed = {}
    for ids, labels in micro:
        _, _, tape = model.forward(ids, labels, n_targets_total=total)
        for k, g in model.backward(tape).items():
            summed[k] = summed.get(k, 0) + g
    from llama_np.training.data import collate
    examples = [batches.examples[i] for i in batches.order(0)[:6]]
    ids, labels = collate(examples, 0)
    _, _, whole = model.loss_and_grads(ids, labels)
    for k in whole:  # equal up to float32 rounding
        assert np.linalg.norm(summed[k] - whole[k]) <= 1e-5 * np.linalg.norm(whole[k]), k


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    straight = tiny_run(tmp_path / "a").train()
    tiny_run(tmp_path / "b", steps=20).train(stop_at=10)
    resumed = tiny_run(tmp_path / "b", steps=20)
    assert resumed.resume() == 10
    resumed.train()
    losses = [r["loss"] for r in train.read_log(tmp_path / "b" / train.LOG_FILE)]
    assert losses == [r["loss"] for r in straight]
    from llama_np.checkpoint.peft import load_adapter  # the final adapters are identical too
    pa = load_adapter(train.latest_checkpoint(tmp_path / "a")).params
    pb = load_adapter(train.latest_checkpoint(tmp_path / "b")).params
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)


def test_loss_falls_on_a_tiny_model(tmp_path):
    history = tiny_run(tmp_path, steps=30, dropout=0.0, lr=3e-2).train()
    assert np.mean([r["loss"] for r in history[-5:]]) < 0.7 * np.mean([r["loss"] for r in history[:3]])


def test_ctrl_c_finishes_the_step_saves_and_resumes(tmp_path):
    trainer = tiny_run(tmp_path, steps=8, grad_accum=1)
    original = trainer.model.backward

    def backward_then_ctrl_c(tape):
        if trainer.step == 2:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C in step 3
        return original(tape)

    trainer.model.backward = backward_then_ctrl_c
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert open(tmp_path / train.LATEST).read().strip() == "checkpoint-3"
    resumed = tiny_run(tmp_path, steps=8, grad_accum=1)
    assert resumed.resume() == 3
    resumed.train()
    losses = [r["loss"] for r in train.read_log(tmp_path / train.LOG_FILE)]
    straight = [r["loss"] for r in tiny_run(tmp_path / "straight", steps=8, grad_accum=1).train()]
    assert losses == straight


def test_checkpoints_are_complete_and_pruned(tmp_path):
    trainer = tiny_run(tmp_path, steps=6, save_every=2, keep_checkpoints=2)
    trainer.train()
    names = sorted(d for d in os.listdir(tmp_path) if d.startswith("checkpoint-"))
    assert names == ["checkpoint-4", "checkpoint-6"]
    assert not [d for d in os.listdir(tmp_path) if d.startswith(".")]  # no temporary leftovers
    folder = train.latest_checkpoint(tmp_path)
    assert set(os.listdir(folder)) == {"adapter_config.json", "adapter_model.safetensors",
                                       train.OPTIMIZER_FILE, train.STATE_FILE}
    state = json.load(open(os.path.join(folder, train.STATE_FILE)))
    assert state["step"] == 6 and state["optimizer_t"] == 6
    png = trainer.plot()
    assert open(png, "rb").read(4) == b"\x89PNG"


def test_evaluation_loss_is_logged(tmp_path):
    trainer = tiny_run(tmp_path, steps=4, eval_every=2)
    trainer.eval_batches = trainer.batches
    history = trainer.train()
    assert [("eval_loss" in r) for r in history] == [False, True, False, True]


def test_plot_log_leaves_the_matplotlib_backend_alone(tmp_path):
    """A notebook's backend must survive a training run's loss plot (plt.show() keeps working)."""
    matplotlib = pytest.importorskip("matplotlib")
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5, "eval_loss": 1.7}\n')
    before = matplotlib.get_backend()
    png = train.plot_log(str(log), str(tmp_path / "loss.png"))
    assert matplotlib.get_backend() == before
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
