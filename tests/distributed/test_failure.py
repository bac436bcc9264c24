"""A rank that raises ends the whole job, non-zero and promptly, with its error shown once."""

from __future__ import annotations

from ..train.conftest import tiny_config
from .launch import run_ranks


def test_a_failing_rank_stops_every_rank(tiny_dataset, tmp_path):
    config = tiny_config(tiny_dataset, tmp_path / "run", trainer={"micro_batch_size": 2},
                         distributed={"strategy": "fsdp", "timeout_s": 30}).to_dict()
    results, wall = run_ranks("tests.distributed.workers:train_failing_on_rank_1", {"config": config, "step": 2},
                              timeout_s=60, check=False)
    assert all(r.returncode != 0 for r in results), [(r.rank, r.returncode) for r in results]
    assert wall < 60
    outputs = "".join(r.output for r in results)
    assert outputs.count("simulated failure on rank 1 at step 2") == 1, outputs
    assert "Traceback" not in results[0].output
