"""The choices around the wrapping that need no second process: device, strategy resolution, evaluation padding."""

from __future__ import annotations

import pytest
import torch

from kiln.data.dataset import TokenDataset
from kiln.data.loader import InstanceLoader
from kiln.distributed import pick_device, resolve_strategy
from kiln.errors import KilnError
from kiln.train.callbacks import Evaluator


@pytest.mark.parametrize("name", ["gpu", "meta"])
def test_a_device_kiln_does_not_run_on_is_refused_under_the_option_the_user_set(name):
    with pytest.raises(KilnError, match=f"trainer.device='{name}' is not a device Kiln runs on"):
        pick_device(name)
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_and_auto_falls_back_to_cpu():
    with pytest.raises(KilnError, match="trainer.device='cuda' but no CUDA device"):
        pick_device("cuda")
    assert pick_device("auto") == torch.device("cpu")


def test_auto_is_unwrapped_on_one_process_and_fsdp_on_several():
    assert resolve_strategy("auto", 1) == "none"
    assert resolve_strategy("auto", 4) == "fsdp"
    assert resolve_strategy("ddp", 1) == "ddp"


def test_an_unwrapped_run_on_several_processes_is_refused_with_the_choices():
    with pytest.raises(KilnError, match="strategy=none but 2 processes.*ddp, fsdp or hsdp"):
        resolve_strategy("none", 2)
    with pytest.raises(KilnError, match="'zero3' is not one of auto, none, ddp, fsdp, hsdp"):
        resolve_strategy("zero3", 2)


def test_every_rank_evaluates_as_many_batches_when_the_split_runs_out_unevenly(tiny_dataset):
    """A rank whose share of the last global batch is empty still runs a forward (all targets ignored)."""
    dataset = TokenDataset.open(tiny_dataset)
    instances = InstanceLoader(dataset, seq_len=32, batch_size=1, split="val", val_fraction=0.1).instances_per_epoch
    batch = next(b for b in range(1, instances) if 0 < instances % (2 * b) <= b)  # rank 1's last share is empty
    loaders = [InstanceLoader(dataset, seq_len=32, batch_size=batch, rank=r, world_size=2, split="val",
                              val_fraction=0.1) for r in range(2)]
    counts, targets = [], []
    for loader in loaders:
        batches = list(Evaluator(loader, token_bytes=[1.0], every=1, max_batches=100).rank_batches())
        counts.append(len(batches))
        targets.append(sum(int((b.labels != -100).sum()) for b in batches))
    assert counts[0] == counts[1] == -(-instances // (2 * batch))
    assert sum(targets) == instances * 32  # every validation target once, none from the padding
