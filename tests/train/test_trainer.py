import copy
import errno
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from kiln.data.dataset import TokenDataset
from kiln.data.loader import Batch, InstanceLoader
from kiln.errors import KilnError
from kiln.model import ModelConfig, Transformer
from kiln.optim.adamw import OptimConfig, build_adamw
from kiln.train import checkpointing
from kiln.train.callbacks import Evaluator
from kiln.train.loss import AUTO_CHUNK_ROWS, loss_chunk_rows, loss_terms
from kiln.train.run import build_run, fit_run, train
from kiln.train.trainer import Trainer

from ..data.conftest import write_dataset
from .conftest import tiny_config, train_until_crash


def _weights(run_dir):
    return load_file(str(checkpointing.list_checkpoints(run_dir)[-1] / "model.safetensors"))


def _batch(ids: torch.Tensor, masked_rows=()) -> Batch:
    labels = ids[:, 1:].clone()
    for row in masked_rows:
        labels[row] = -100
    inputs = ids[:, :-1]
    return Batch(inputs, labels, torch.zeros_like(inputs), torch.arange(len(ids)))


def _bare_trainer(accum: int, micro: int) -> Trainer:
    cfg = tiny_config("unused", "unused", trainer={"grad_accum": accum, "micro_batch_size": micro},
                      optim={"grad_clip": None})
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_ff=32))
    return Trainer(cfg, model, build_adamw(model, OptimConfig(lr=1e-2)), iter([]), torch.device("cpu"), [], 1)


def test_grad_accumulation_weights_every_target_token_equally():
    """Two micro-batches with different numbers of target tokens equal one batch holding both."""
    torch.manual_seed(1)
    ids = torch.randint(0, 50, (4, 9))
    whole, split = _bare_trainer(1, 4), _bare_trainer(2, 2)
    m1 = whole.train_step([_batch(ids, masked_rows=[0, 1, 2])])
    m2 = split.train_step([_batch(ids[:2], masked_rows=[0, 1]), _batch(ids[2:], masked_rows=[0])])
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-6)
    assert m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-5)
    for a, b in zip(whole.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_z_loss_is_weight_times_mean_squared_log_normaliser():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7) * 3
    labels = torch.tensor([[1, 2, -100], [0, 6, 5]])
    ce, z = loss_terms(logits, labels, n_targets=5, z_weight=1e-4)
    rows = [(b, t) for b in range(2) for t in range(3) if labels[b, t] != -100]
    lse = [math.log(sum(math.exp(v) for v in logits[b, t].tolist())) for b, t in rows]
    expected_ce = sum(lse[i] - logits[b, t, labels[b, t]].item() for i, (b, t) in enumerate(rows)) / 5
    assert ce.item() == pytest.approx(expected_ce, rel=1e-5)
    assert z.item() == pytest.approx(1e-4 * sum(v * v for v in lse) / 5, rel=1e-5)


def test_run_writes_metrics_checkpoints_and_samples(tiny_dataset, tmp_path):
    run = train(tiny_config(tiny_dataset, tmp_path / "run"))
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 7))
    for key in ("loss", "z_loss", "grad_norm", "lr", "tokens", "tokens_per_s", "mfu"):
        assert all(key in m and math.isfinite(m[key]) for m in lines), key
    assert lines[-1]["tokens"] == 6 * 4 * 32
    assert [m["step"] for m in lines if "val_loss" in m] == [3, 6]
    assert lines[-1]["val_ppl"] == pytest.approx(math.exp(lines[-1]["val_loss"]), rel=1e-6)
    assert [p.name for p in checkpointing.list_checkpoints(run.run_dir)] == ["step000003", "step000006"]
    step_dir = run.run_dir / "step000006"
    for name in ("dcp", "model.json", "model.safetensors", "tokenizer.json", "train_state.json", "rng.pt",
                 "config.yaml"):
        assert (step_dir / name).exists(), name
    assert json.loads((step_dir / "train_state.json").read_text())["step"] == 6
    assert (run.run_dir / "samples.txt").read_text().startswith("The king")
    assert (run.run_dir / "config.yaml").is_file()


def test_training_reduces_validation_loss(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset, tmp_path / "run", trainer={"steps": 30}, eval={"every": 5},
                      checkpoint={"every": 0}))
    val = [m["val_loss"] for m in map(json.loads, (tmp_path / "run/metrics.jsonl").read_text().splitlines())
           if "val_loss" in m]
    assert val[-1] < val[0] - 1.0


def test_last_validation_reads_every_held_out_target_once(tiny_dataset, tmp_path):
    """val_full_* are the loss and bits per byte of the whole held-out split, recomputed here target by target;
    the periodic passes keep reading max_batches batches."""
    run = train(tiny_config(tiny_dataset, tmp_path / "run", eval={"max_batches": 1, "full_at_end": True}))
    evaluator = next(cb for cb in run.trainer.callbacks if isinstance(cb, Evaluator))
    model = run.trainer.model.eval()
    nats, text_nats, n_bytes, targets = 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for batch in evaluator.val_loader:  # one pass in a fixed order over every held-out instance
            logits = model(batch.input_ids).double()
            for row, labels in enumerate(batch.labels):
                for t, label in enumerate(labels.tolist()):
                    if label == -100:
                        continue
                    token_nats = (logits[row, t].logsumexp(0) - logits[row, t, label]).item()
                    nats, targets = nats + token_nats, targets + 1
                    if evaluator.token_bytes[label] > 0:
                        text_nats, n_bytes = text_nats + token_nats, n_bytes + evaluator.token_bytes[label].item()
    last = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()][-1]
    assert last["val_full_tokens"] == targets > 4 * 32  # more than the one batch the periodic pass reads
    assert last["val_full_loss"] == pytest.approx(nats / targets, rel=1e-5)
    assert last["val_full_bpb"] == pytest.approx(text_nats / math.log(2) / n_bytes, rel=1e-5)
    assert last["val_loss"] != pytest.approx(last["val_full_loss"], rel=1e-6)
    earlier = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()][:-1]
    assert not any("val_full_loss" in m for m in earlier) and any("val_loss" in m for m in earlier)


def test_whole_split_at_end_by_default_only_when_small(tiny_dataset):
    from kiln.train.run import FULL_SPLIT_AUTO_TOKENS, full_split_at_end

    loader = InstanceLoader(TokenDataset.open(tiny_dataset), seq_len=32, batch_size=4, split="val", val_fraction=0.1)
    assert full_split_at_end(None, loader) and not full_split_at_end(False, loader)
    loader.instances_per_epoch = FULL_SPLIT_AUTO_TOKENS // 32 + 1
    assert not full_split_at_end(None, loader) and full_split_at_end(True, loader)


def test_same_seed_same_weights_different_seed_different(tiny_dataset, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(tiny_config(tiny_dataset, tmp_path / name, trainer={"steps": 3, "seed": seed}))
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_after_a_crash_is_bitwise_identical(tiny_dataset, tmp_path, monkeypatch):
    train(tiny_config(tiny_dataset, tmp_path / "whole"))
    cfg = tiny_config(tiny_dataset, tmp_path / "broken")
    train_until_crash(copy.deepcopy(cfg), 5, monkeypatch)
    assert [p.name for p in checkpointing.list_checkpoints(tmp_path / "broken")] == ["step000003"]
    run = train(cfg)  # the same command again resumes by itself
    assert run.resumed_from.name == "step000003"
    whole, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "broken")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    steps = [json.loads(x)["step"] for x in (tmp_path / "broken/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_resume_flag_without_checkpoint_is_refused(tiny_dataset, tmp_path):
    with pytest.raises(KilnError, match="holds no complete checkpoint"):
        build_run(tiny_config(tiny_dataset, tmp_path / "empty"), resume=True)


def test_resume_with_a_changed_model_names_the_tensors(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset, tmp_path / "run", trainer={"steps": 3}))
    changed = tiny_config(tiny_dataset, tmp_path / "run", model={"d_ff": 48})
    with pytest.raises(KilnError) as info:
        build_run(changed)
    assert "d_ff: 64 -> 48" in str(info.value)
    assert "blocks.0.mlp.up.weight" in str(info.value)


def test_vocabulary_smaller_than_the_data_is_refused(tiny_dataset, tmp_path):
    with pytest.raises(KilnError, match="vocab_size=100 is smaller than the data tokenizer"):
        build_run(tiny_config(tiny_dataset, tmp_path / "run", model={"vocab_size": 100}))


def test_nan_loss_stops_naming_step_and_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_dataset, tmp_path / "run")
    original = Transformer.forward

    def nan_from_step_5(self, input_ids, **kw):
        logits = original(self, input_ids, **kw)
        return logits * float("nan") if calls.append(1) or len(calls) >= 5 else logits

    calls: list[int] = []
    monkeypatch.setattr(Transformer, "forward", nan_from_step_5)
    cfg.eval.every = 0
    with pytest.raises(KilnError) as info:
        train(cfg)
    assert "at step 5" in str(info.value)
    assert "step000003" in str(info.value)


def test_full_disk_while_checkpointing_keeps_earlier_checkpoints(tiny_dataset, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_dataset, tmp_path / "run")
    real_save = checkpointing.dcp.save
    saves: list[int] = []

    def fail_second(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpointing.dcp, "save", fail_second)
    with pytest.raises(KilnError) as info:
        train(cfg)
    assert "No space left on device" in str(info.value) and "step000003" in str(info.value)
    run_dir = tmp_path / "run"
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(("step", ".tmp"))] == ["step000003"]
    before = _weights(run_dir)
    monkeypatch.setattr(checkpointing.dcp, "save", real_save)
    run = build_run(tiny_config(tiny_dataset, run_dir))
    assert run.resumed_from.name == "step000003"
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())


def test_bf16_autocast_keeps_fp32_master_weights_and_tracks_fp32_loss(tiny_dataset, tmp_path):
    fp32 = train(tiny_config(tiny_dataset, tmp_path / "fp32", trainer={"steps": 2}))
    bf16 = train(tiny_config(tiny_dataset, tmp_path / "bf16", trainer={"steps": 2, "precision": "bf16"}))
    assert {p.dtype for p in bf16.model.parameters()} == {torch.float32}
    losses = [[json.loads(x)["loss"] for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
              for r in (fp32, bf16)]
    assert losses[1][0] == pytest.approx(losses[0][0], abs=0.05)


def _summed_nats(model, batches, masked: bool) -> tuple[float, int]:
    nats, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(batch.input_ids, doc_ids=batch.doc_ids if masked else None)
            nats += F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100,
                                    reduction="sum").item()
            count += int((batch.labels != -100).sum())
    return nats, count


def test_intra_document_masking_reaches_training_and_validation(tiny_dataset, tmp_path):
    """Instances of 128 tokens span documents of 50-100 tokens. With data.intra_doc_masking, the training loss and
    the validation loss are the model's losses under the batches' document masks (which the model tests check
    against each document run alone), and differ from the unmasked ones."""
    cfg = tiny_config(tiny_dataset, tmp_path / "run", data={"seq_len": 128, "intra_doc_masking": True},
                      trainer={"z_loss": 0.0})
    run = build_run(cfg)
    trainer, model = run.trainer, run.model
    batch = next(trainer.batches)
    with torch.no_grad():
        ce, _, _ = trainer.forward_loss(batch, int((batch.labels != -100).sum()), batch.input_ids.shape[0])
    masked, count = _summed_nats(model, [batch], masked=True)
    assert ce.item() == pytest.approx(masked / count, rel=1e-5)
    assert abs(ce.item() - _summed_nats(model, [batch], masked=False)[0] / count) > 1e-4  # masks do matter here
    evaluator = next(cb for cb in trainer.callbacks if isinstance(cb, Evaluator))
    val_masked, val_count = _summed_nats(model, list(evaluator.rank_batches()), masked=True)
    val_plain, _ = _summed_nats(model, list(evaluator.rank_batches()), masked=False)
    val_loss = evaluator.evaluate(trainer)["val_loss"]
    assert val_loss == pytest.approx(val_masked / val_count, rel=1e-5)
    assert abs(val_loss - val_plain / val_count) > 1e-4


def test_validation_is_the_same_targets_whatever_the_repeat_filter(tmp_path):
    """Every document repeats one 2-gram 100 times, so the filter masks training instances; validation keeps every
    target either way, and its loss does not depend on the setting."""
    docs = [np.tile([5 + i, 9 + i], 100) for i in range(20)]
    dataset = write_dataset(tmp_path / "repeats", docs)
    results = {}
    for on in (True, False):
        data = {"repeat_filter": on, "val_fraction": 0.2, "seq_len": 64}
        cfg = tiny_config(dataset, tmp_path / f"run-{on}", data=data, trainer={"steps": 1})
        run = build_run(cfg)
        evaluator = next(cb for cb in run.trainer.callbacks if isinstance(cb, Evaluator))
        val_labels = torch.cat([b.labels for b in evaluator.rank_batches()])
        assert (val_labels != -100).all()
        assert bool((next(run.trainer.batches).labels == -100).all(dim=1).any()) == on  # it acts on training
        results[on] = (val_labels, evaluator.evaluate(run.trainer)["val_loss"])
    assert torch.equal(results[True][0], results[False][0])
    assert results[True][1] == results[False][1]


@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_recomputes_the_chosen_blocks_and_gives_the_same_weights(tiny_dataset, tmp_path,
                                                                                          every):
    """Every `every`-th of 3 blocks runs its forward again in backward; the weights are those of no recomputation."""
    train(tiny_config(tiny_dataset, tmp_path / "a", model={"n_layers": 3}, trainer={"steps": 2}))
    run = build_run(tiny_config(tiny_dataset, tmp_path / "b", model={"n_layers": 3},
                                trainer={"steps": 2, "activation_checkpointing": True, "ac_every": every}))
    calls = [0, 0, 0]  # forward passes that record gradients: training and recomputation, not evaluation

    def count(i):
        return lambda *_: calls.__setitem__(i, calls[i] + torch.is_grad_enabled())
    for i, block in enumerate(run.model.blocks):
        block.attn.register_forward_pre_hook(count(i))
    fit_run(run)
    assert calls == [4 if i % every == 0 else 2 for i in range(3)]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_the_memory_budget_is_set_in_a_fresh_process():
    """`import torch` does not load the compiler's config module; a run's first act must not assume it."""
    code = ("from kiln.train.wrapping import set_activation_memory_budget as s; s(0.25); "
            "import torch._functorch.config as c; assert c.activation_memory_budget == 0.25")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_compiled_blocks_with_a_memory_budget_train_as_eager_does(tiny_dataset, tmp_path):
    """Regional compilation (each block on its own) under the compiler's activation memory budget."""
    eager = train(tiny_config(tiny_dataset, tmp_path / "eager", trainer={"steps": 3}))
    compiled = train(tiny_config(tiny_dataset, tmp_path / "compiled",
                                 trainer={"steps": 3, "compile": True, "ac_budget": 0.5}))
    assert all(block._compiled_call_impl is not None for block in compiled.model.blocks)
    assert compiled.trainer.model is compiled.model  # no whole-model wrapper: names and hooks stay as they are
    assert torch._functorch.config.activation_memory_budget == 0.5
    losses = [[json.loads(x)["loss"] for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
              for r in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    for key in a:  # fused kernels sum in another order, through 3 AdamW steps at LR 1e-2
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=5e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_the_chunked_loss_trains_as_whole_logits_do(tiny_dataset, tmp_path, tied):
    """Rows a few at a time (the last block short) under gradient accumulation, with the stability statistics,
    evaluation and checkpoints every 2 steps: the same metrics and weights as whole logits."""
    runs = {}
    for chunk in (0, 7):
        runs[chunk] = train(tiny_config(tiny_dataset, tmp_path / str(chunk), model={"tie_embeddings": tied},
                                        trainer={"steps": 4, "grad_accum": 2, "micro_batch_size": 2,
                                                 "loss_chunk": chunk},
                                        eval={"every": 2}, checkpoint={"every": 2}, stability={"layer_stats_every": 2}))
    assert [r.trainer.loss_chunk for r in runs.values()] == [0, 7]
    whole, chunked = ([json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
                      for r in runs.values())
    for a, b in zip(whole, chunked, strict=True):
        for key in ("loss", "z_loss", "grad_norm", "val_loss", "output_logit_max"):
            assert (key in a) == (key in b) and b.get(key, 0) == pytest.approx(a.get(key, 0), rel=1e-5), key
    assert sum("output_logit_max" in m for m in whole) == 2
    a, b = _weights(tmp_path / "0"), _weights(tmp_path / "7")
    for key in a:  # fp32 sums in another order through 4 AdamW steps at LR 1e-2; float64 is exact (below)
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=5e-5)


def test_the_chunked_loss_step_equals_the_whole_logits_step_in_float64():
    torch.manual_seed(1)
    ids = torch.randint(0, 50, (4, 9))
    steps = []
    for chunk in (0, 5):
        trainer = _bare_trainer(2, 2)
        trainer.model.double()
        trainer.loss_chunk = chunk
        metrics = trainer.train_step([_batch(ids[:2], masked_rows=[0]), _batch(ids[2:])])
        steps.append((metrics, list(trainer.model.parameters())))
    (m0, w0), (m5, w5) = steps
    assert m5["loss"] == pytest.approx(m0["loss"], rel=1e-12) and m5["z_loss"] == pytest.approx(m0["z_loss"], rel=1e-12)
    assert m5["grad_norm"] == pytest.approx(m0["grad_norm"], rel=1e-12)
    for a, b in zip(w0, w5, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_the_loss_is_chunked_by_default_only_at_a_large_vocabulary_and_more_rows_than_a_block():
    rows = 4 * AUTO_CHUNK_ROWS
    assert loss_chunk_rows(None, 100_352, rows) == AUTO_CHUNK_ROWS and loss_chunk_rows(None, 8192, rows) == 0
    assert loss_chunk_rows(None, 100_352, AUTO_CHUNK_ROWS) == 0  # one block would save nothing
    assert loss_chunk_rows(0, 100_352, rows) == 0 and loss_chunk_rows(64, 8192, 10) == 64


def test_on_a_gpu_the_loss_is_chunked_by_default_only_where_its_logits_would_crowd_the_memory():
    rows, vocab = 4 * 4096, 100_352  # olmo2-1b's micro-batch in docs/performance.md: 6.6 GB of fp32 logits
    assert loss_chunk_rows(None, vocab, rows, gpu_memory=141 * 10**9) == 0  # an H200: whole logits, 5% faster
    assert loss_chunk_rows(None, vocab, rows, gpu_memory=24 * 10**9) == AUTO_CHUNK_ROWS  # a 24 GB card
    assert loss_chunk_rows(512, vocab, rows, gpu_memory=141 * 10**9) == 512  # a setting always wins


def test_loss_gradients_equal_autograd_of_the_plain_formula():
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 11) * 4).requires_grad_()
    labels = torch.randint(0, 11, (3, 5))
    labels[0, :2] = -100
    n = int((labels != -100).sum())
    ce, z = loss_terms(logits, labels, n, z_weight=0.1)
    (2.0 * ce + 3.0 * z).backward()
    reference = logits.detach().clone().requires_grad_()
    flat, keep = reference.flatten(0, 1), labels.flatten() != -100
    ref_ce = torch.nn.functional.cross_entropy(flat, labels.flatten(), ignore_index=-100, reduction="sum") / n
    ref_z = torch.logsumexp(flat[keep], dim=-1).pow(2).sum() * 0.1 / n
    (2.0 * ref_ce + 3.0 * ref_z).backward()
    torch.testing.assert_close(logits.grad, reference.grad)
    assert ce.item() == pytest.approx(ref_ce.item()) and z.item() == pytest.approx(ref_z.item())


def test_tensorboard_event_files_hold_the_step_metrics(tiny_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_config(tiny_dataset, tmp_path / "run", logging={"tensorboard": True, "progress": "lines"}))
    events = EventAccumulator(str(run.run_dir / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("loss")]
    logged = [json.loads(x)["loss"] for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(logged)
    assert [e.step for e in events.Scalars("val_loss")] == [3, 6]
