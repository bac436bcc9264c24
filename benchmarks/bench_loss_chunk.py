"""The output projection + loss + its backward, from whole logits or a block of rows at a time.

For each (rows, width, vocab) shape, the full path (`F.linear` then `loss_terms`) and the chunked path
(`chunked_loss_terms` at each chunk size) alternate call by call in one process; we report the median time and
the peak memory each needs above its inputs: `torch.cuda.max_memory_allocated` on GPU; on CPU, which has no
allocator counter, the peak RSS (VmHWM) of a fresh process that runs two steps minus one that only builds the
inputs.

    python benchmarks/bench_loss_chunk.py [--shapes 4096x768x100352 8192x512x32000] [--chunks 1024 4096]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from kiln.train.loss import chunked_loss_terms, loss_terms


def inputs(rows: int, width: int, vocab: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, 1, width, generator=g).to(device).requires_grad_()
    weight = (torch.randn(vocab, width, generator=g) * 0.02).to(device).requires_grad_()
    labels = torch.randint(0, vocab, (rows, 1), generator=g).to(device)
    return hidden, weight, labels


def step(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int) -> float:
    """One forward + backward of the loss; returns seconds."""
    hidden.grad = weight.grad = None
    start = time.perf_counter()
    n = labels.numel()
    if chunk:
        ce, z = chunked_loss_terms(hidden, weight, labels, n, 1e-5, chunk)
    else:
        ce, z = loss_terms(F.linear(hidden, weight), labels, n, 1e-5)
    (ce + z).backward()
    if hidden.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def vm_hwm_kib() -> int:
    """This process's peak resident memory. Not `ru_maxrss`: Linux carries that over from the parent."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_rss_mib(shape: str, chunk: int, device: str) -> float:
    """Peak RSS of a fresh process that builds the inputs and runs two steps, minus one that only builds them."""
    def run(steps: int) -> float:
        code = (f"import sys; sys.argv=['x']; import benchmarks.bench_loss_chunk as b; "
                f"h,w,l=b.inputs(*map(int,'{shape}'.split('x')),'{device}'); "
                f"[b.step(h,w,l,{chunk}) for _ in range({steps})]; "
                f"print(b.vm_hwm_kib())")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1]) / 1024
    return run(2) - run(0)


def time_shape(shape: str, chunks: list[int], device: str, steps: int) -> dict[str, float]:
    hidden, weight, labels = inputs(*map(int, shape.split("x")), device)
    paths = [0, *chunks]
    for chunk in paths:
        step(hidden, weight, labels, chunk)  # warm-up
    times: dict[int, list[float]] = {c: [] for c in paths}
    for _ in range(steps):
        for chunk in paths:
            times[chunk].append(step(hidden, weight, labels, chunk))
    return {str(c): statistics.median(t) for c, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["4096x768x100352", "8192x512x32000", "4096x128x2048"],
                        help="rows x width x vocab")
    parser.add_argument("--chunks", nargs="+", type=int, default=[1024, 4096])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print("| rows x width x vocab | path | median s | vs full | extra peak MiB |")
    print("|---|---|---|---|---|")
    for shape in args.shapes:
        medians = time_shape(shape, args.chunks, args.device, args.steps)
        for chunk, seconds in medians.items():
            if args.device == "cpu":
                mem = peak_rss_mib(shape, int(chunk), args.device)
            else:
                torch.cuda.reset_peak_memory_stats()
                hidden, weight, labels = inputs(*map(int, shape.split("x")), args.device)
                base = torch.cuda.memory_allocated()
                step(hidden, weight, labels, int(chunk))
                mem = (torch.cuda.max_memory_allocated() - base) / 2**20
            name = "full logits" if chunk == "0" else f"chunk {chunk}"
            print(f"| {shape} | {name} | {seconds:.3f} | {medians['0'] / seconds:.2f}x | {mem:.0f} |", flush=True)


if __name__ == "__main__":
    main()
