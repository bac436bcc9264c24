"""Loader throughput in tokens per second (target: at least 5M tokens/s, so data never limits training).

    python benchmarks/bench_loader.py                       # built-in dataset (prepared once into the kiln cache)
    python benchmarks/bench_loader.py PATH/TO/DATASET --seq-len 4096 --batch-size 4
Counts input tokens of the batches the loader yields: reading, shuffling, the repeat filter and tensor building.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kiln.data.dataset import TokenDataset
from kiln.data.loader import InstanceLoader, RepeatFilterConfig
from kiln.data.prepare import builtin_dataset


def measure(loader: InstanceLoader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # first-batch costs (permutation, caches) are paid once per epoch, not per batch
    started = time.perf_counter()
    tokens = 0
    for _ in range(batches):
        tokens += next(iterator).input_ids.numel()
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", type=Path, help="dataset folder (default: the built-in dataset)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()
    dataset = TokenDataset.open(args.dataset or builtin_dataset())
    print(f"{dataset.path}: {dataset.num_tokens:,} tokens, {dataset.num_documents:,} documents")
    for name, config in [("repeat filter on", RepeatFilterConfig()), ("repeat filter off", None)]:
        loader = InstanceLoader(dataset, seq_len=args.seq_len, batch_size=args.batch_size, repeat_filter=config)
        rate = measure(loader, args.batches)
        print(f"seq_len {args.seq_len}, batch {args.batch_size}, {name}: {rate / 1e6:.1f}M tokens/s")
    mixture = InstanceLoader([dataset, dataset], seq_len=args.seq_len, batch_size=args.batch_size, weights=[0.7, 0.3])
    print(f"two-source 70/30 mixture, repeat filter on: {measure(mixture, args.batches) / 1e6:.1f}M tokens/s")


if __name__ == "__main__":
    main()
