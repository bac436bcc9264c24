"""Health checks that tell hardware trouble from software trouble, for `kiln doctor`.

Each check returns a CheckResult: pass, warn or fail, a one-line result, and for warn/fail which side is
suspect and why. The reasoning that separates the two:

- A known-answer computation (exact integers, or a bound from rounding-error analysis) that comes out wrong,
  or the same matmul giving different bits twice, is the device: silent data corruption. Software cannot
  make an exact integer matmul wrong without also being wrong everywhere.
- Deterministic matmuls but a training step that differs run to run is software: nondeterministic kernels.
- Low throughput with correct answers is clocks, thermals, a shared device, or a slow library build.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

STATUSES = ("pass", "warn", "fail")
CPU_MIN_FLOPS = 1e9  # below 1 GFLOP/s a CPU matmul is broken, not slow
CPU_MIN_COPY_BYTES_S = 1e9
GPU_MIN_COPY_BYTES_S = 100e9
GPU_MIN_PEAK_FRACTION = 0.4  # well-tuned large bf16 GEMMs reach 60-80% of the data-sheet peak
MIN_WRITE_BYTES_S = 50e6
MIN_FREE_BYTES = 1 << 30


@dataclass
class CheckResult:
    name: str
    status: str
    summary: str
    suspect: str = ""  # for warn/fail: hardware, software, storage or network
    hint: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Probe:
    """Where and how hard to check: the device, the checkpoint folder, and whether to keep it short."""

    device: torch.device
    folder: Path
    quick: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self) -> float:
        return 0.15 if self.quick else 0.5


def rate(probe: Probe, fn: Callable[[], object], seconds: float) -> float:
    """Calls of `fn` per second, after one warm-up call, for about `seconds`."""
    fn()
    probe.sync()
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        probe.sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


@contextlib.contextmanager
def exact_matmuls() -> Iterator[None]:
    """No TF32 and no reduced-precision split-K reductions while a check relies on exact accumulation."""
    flags = torch.backends.cuda.matmul
    saved = (torch.get_float32_matmul_precision(), flags.allow_tf32, flags.allow_bf16_reduced_precision_reduction)
    torch.set_float32_matmul_precision("highest")
    flags.allow_tf32 = flags.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])  # first: it also sets allow_tf32
        flags.allow_tf32, flags.allow_bf16_reduced_precision_reduction = saved[1:]


def check_matmul_throughput(probe: Probe, dtype: torch.dtype) -> CheckResult:
    """Achieved dense matmul FLOP/s; on a known GPU against its data-sheet peak (`kiln.train.flops`).

    fp32 is held to the TF32 peak when torch's float32 matmul precision allows TF32, else to the plain fp32 one.
    """
    from kiln.train.flops import gpu_peak_flops, matmul_kind

    label = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    size = (4096 if probe.quick else 8192) if probe.cuda else (512 if probe.quick else 1024)
    a = torch.randn(size, size, device=probe.device, dtype=dtype)  # values do not matter for speed
    b = torch.randn(size, size, device=probe.device, dtype=dtype)
    flops = 2 * size**3 * rate(probe, lambda: a @ b, probe.seconds())
    name, metrics = f"matmul {label}", {"flops": flops, "size": size}
    if not probe.cuda:
        summary = f"{flops / 1e9:,.1f} GFLOP/s at {size}x{size} (CPU: no data-sheet peak)"
        if flops >= CPU_MIN_FLOPS:
            return CheckResult(name, "pass", summary, metrics=metrics)
        return CheckResult(name, "warn", summary, "software", "check torch.get_num_threads() and the BLAS build; "
                           "a CPU this slow is misconfigured", metrics)
    device_name = torch.cuda.get_device_name(probe.device)
    kind = matmul_kind(label)
    peak = gpu_peak_flops(device_name, kind)
    if peak is None:
        summary = f"{flops / 1e12:,.1f} TFLOP/s on {device_name} (no data-sheet peak known)"
        return CheckResult(name, "pass", summary, metrics=metrics)
    metrics["peak_fraction"] = flops / peak
    status = "pass" if flops >= GPU_MIN_PEAK_FRACTION * peak else "warn"
    summary = f"{flops / 1e12:,.1f} TFLOP/s = {flops / peak:.0%} of the {device_name} {kind} peak {peak / 1e12:,.0f}"
    if status == "pass":
        return CheckResult(name, status, summary, metrics=metrics)
    return CheckResult(name, status, summary, "hardware", "low clocks (thermal or power capping, `nvidia-smi -q -d "
                       "PERFORMANCE`), a MIG slice, or another process on the GPU", metrics)


def tensor_bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern, so NaNs and signed zeros compare exactly."""
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def check_matmul_determinism(probe: Probe) -> CheckResult:
    """The same matmul on the same inputs must give the same bits every time."""
    size, reps = (256, 3) if probe.quick else (512, 10)
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(size, size, generator=gen).to(probe.device)
    b = torch.randn(size, size, generator=gen).to(probe.device)
    first = tensor_bits(a @ b)
    differing = sum(int((tensor_bits(a @ b) != first).sum()) for _ in range(reps))
    if differing == 0:
        return CheckResult("matmul determinism", "pass", f"{reps + 1} identical {size}x{size} fp32 matmuls")
    return CheckResult("matmul determinism", "fail", f"{differing} elements differed over {reps} repeats",
                       "hardware", "the same kernel on the same inputs gave different bits: the device is flaky",
                       {"differing": differing})


def _train_step_weights(probe: Probe) -> list[torch.Tensor]:
    """Weights after one forward/backward/SGD step of a tiny transformer, from fixed seeds.

    The update is written out rather than taken from torch.optim, whose first use imports the compiler stack
    (seconds); the kernels whose determinism is in question are the forward and backward ones.
    """
    from kiln.model.config import ModelConfig
    from kiln.model.transformer import Transformer

    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=64)
    with torch.random.fork_rng(devices=[probe.device] if probe.cuda else []):
        torch.manual_seed(0)
        model = Transformer(cfg).to(probe.device)
    tokens = torch.randint(0, cfg.vocab_size, (4, 33), generator=torch.Generator().manual_seed(2)).to(probe.device)
    logits = model(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).backward()
    with torch.no_grad():
        for param in model.parameters():
            param -= 0.1 * param.grad
    return [p.detach().clone() for p in model.parameters()]


def check_step_determinism(probe: Probe) -> CheckResult:
    """A training step twice from the same seed must give the same weights, bit for bit."""
    first, second = _train_step_weights(probe), _train_step_weights(probe)
    differing = sum(int((tensor_bits(x) != tensor_bits(y)).sum()) for x, y in zip(first, second, strict=True))
    total = sum(x.numel() for x in first)
    if differing == 0:
        summary = f"two tiny-transformer training steps: {total:,} weights identical"
        return CheckResult("step determinism", "pass", summary)
    return CheckResult("step determinism", "warn" if probe.cuda else "fail",
                       f"{differing:,} of {total:,} weights differ between two identical steps", "software",
                       "nondeterministic kernels (atomics in scatter/embedding backward); "
                       "torch.use_deterministic_algorithms(True) makes steps reproducible. If matmul determinism "
                       "also fails, suspect the hardware instead", {"differing": differing})


def integer_matmul_operands(n: int, period: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer matrices A, B and their exact product from a closed form, not from a matmul.

    A[i, k] = x_i + k % p and B[k, j] = k % p + y_j, with x_i = 3i % p - p/2 and y_j = 5j % p - p/2. For n a
    multiple of p every residue r appears n/p times, so C[i, j] = (n/p) * sum_r (x_i + r)(r + y_j)
    = (n/p) * (p x_i y_j + (x_i + y_j) p(p-1)/2 + (p-1)p(2p-1)/6). With p = 16 the entries lie in [-8, 22]
    (exact in bf16) and every partial sum stays far below 2**24, so fp32 accumulation is exact in any order.
    """
    if n % period:
        raise ValueError(f"n={n} must be a multiple of the period {period}")
    idx = np.arange(n, dtype=np.int64)
    x, y, r = (3 * idx) % period - period // 2, (5 * idx) % period - period // 2, idx % period
    a, b = x[:, None] + r[None, :], r[:, None] + y[None, :]
    s1, s2 = period * (period - 1) // 2, (period - 1) * period * (2 * period - 1) // 6
    exact = (n // period) * (period * np.outer(x, y) + (x[:, None] + y[None, :]) * s1 + s2)
    return a, b, exact


Matmul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _integer_errors(probe: Probe, n: int, reps: int, matmul: Matmul) -> tuple[int, float]:
    """(wrong elements, largest error) of exact integer matmuls in fp32 and bf16 against the closed form."""
    a, b, exact = integer_matmul_operands(n)
    wrong, worst = 0, 0.0
    for dtype in (torch.float32, torch.bfloat16):
        # bf16 outputs are the exact fp32 sum rounded once, so compare with the exact answer rounded the same way
        expected = torch.from_numpy(exact).to(torch.float32).to(dtype).to(probe.device).float()
        ta, tb = torch.from_numpy(a).to(probe.device, dtype), torch.from_numpy(b).to(probe.device, dtype)
        for _ in range(reps):
            diff = (matmul(ta, tb).float() - expected).abs()
            wrong += int((diff != 0).sum())
            worst = max(worst, float(diff.max()))
    return wrong, worst


def _random_errors(probe: Probe, n: int, reps: int, matmul: Matmul) -> int:
    """Elements of a fixed-seed fp32 matmul outside the rounding-error bound around the float64 product.

    |fl(AB) - AB| <= gamma_n |A||B|, gamma_n = n u / (1 - n u), for any summation order (Higham, Accuracy and
    Stability of Numerical Algorithms, eq. 3.5); the float64 reference's own bound (u = 2**-53) is added.
    """
    gen = torch.Generator().manual_seed(3)
    fa, fb = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    reference = fa.double() @ fb.double()
    gamma = sum(n * u / (1 - n * u) for u in (2.0**-24, 2.0**-53))
    bound = gamma * (fa.double().abs() @ fb.double().abs())
    da, db = fa.to(probe.device), fb.to(probe.device)
    return sum(int(((matmul(da, db).cpu().double() - reference).abs() > bound).sum()) for _ in range(reps))


def check_known_answer(probe: Probe, matmul: Matmul = torch.matmul) -> CheckResult:
    """Silent data corruption: exact integer matmuls (fp32, bf16) and fixed-seed fp32 ones within a proven bound.

    `matmul` is injectable so tests can show that a corrupted result is caught.
    """
    n_int = (1024 if probe.quick else 4096) if probe.cuda else (256 if probe.quick else 512)
    n_rand = (512 if probe.quick else 1024) if probe.cuda else (256 if probe.quick else 512)  # float64 ref on CPU
    reps = 2 if probe.quick else 5
    with exact_matmuls():
        wrong, worst = _integer_errors(probe, n_int, reps, matmul)
        wrong += _random_errors(probe, n_rand, reps, matmul)
    metrics = {"wrong_elements": wrong, "max_integer_error": worst, "size": n_int}
    if wrong == 0:
        return CheckResult("known answer", "pass", f"exact {n_int}x{n_int} integer matmuls (fp32, bf16) and "
                           f"{n_rand}x{n_rand} fp32 within the rounding bound, {reps} times each", metrics=metrics)
    return CheckResult("known answer", "fail", f"{wrong} wrong elements (largest integer error {worst:g})", "hardware",
                       "silent data corruption: take this device out of service and rerun to confirm", metrics)


def check_memory_bandwidth(probe: Probe) -> CheckResult:
    """Large tensor copy, counting bytes read plus bytes written."""
    n_bytes = (256 << 20 if probe.quick else 1 << 30) if probe.cuda else (32 << 20 if probe.quick else 128 << 20)
    src = torch.ones(n_bytes // 4, device=probe.device)
    dst = torch.empty_like(src)
    speed = 2 * n_bytes * rate(probe, lambda: dst.copy_(src), probe.seconds())
    if not bool((dst == 1).all()):
        return CheckResult("memory bandwidth", "fail", "a copied tensor came back with wrong values", "hardware",
                           "memory corruption: take this device out of service")
    minimum = GPU_MIN_COPY_BYTES_S if probe.cuda else CPU_MIN_COPY_BYTES_S
    summary = f"{speed / 1e9:,.1f} GB/s copying {n_bytes >> 20} MiB"
    if speed >= minimum:
        return CheckResult("memory bandwidth", "pass", summary, metrics={"bytes_per_s": speed})
    return CheckResult("memory bandwidth", "warn", f"{summary}, below {minimum / 1e9:g} GB/s", "hardware",
                       "memory clocks, a NUMA or PCIe misplacement, or another process competing",
                       {"bytes_per_s": speed})


def check_write_speed(probe: Probe) -> CheckResult:
    """Write + fsync speed and free space of the checkpoint folder; fail if it cannot be written."""
    n_bytes, chunk = (16 << 20 if probe.quick else 64 << 20), os.urandom(4 << 20)
    path = probe.folder / f".kiln-doctor-{socket.gethostname()}-{os.getpid()}.tmp"
    try:
        probe.folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(n_bytes // len(chunk)):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        speed = n_bytes / (time.perf_counter() - start)
        free = shutil.disk_usage(probe.folder).free
    except OSError as err:
        return CheckResult("checkpoint folder", "fail", f"cannot write to {probe.folder}: {err}", "storage",
                           "choose a writable folder with --dir, or fix its permissions / free space")
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    metrics = {"bytes_per_s": speed, "free_bytes": free}
    summary = f"{speed / 1e6:,.0f} MB/s write+fsync, {free / 2**30:,.1f} GiB free in {probe.folder}"
    if speed >= MIN_WRITE_BYTES_S and free >= MIN_FREE_BYTES:
        return CheckResult("checkpoint folder", "pass", summary, metrics=metrics)
    return CheckResult("checkpoint folder", "warn", summary, "storage",
                       f"checkpoints stall training below {MIN_WRITE_BYTES_S / 1e6:g} MB/s and fail on a full disk",
                       metrics)


def run_checks(probe: Probe) -> list[CheckResult]:
    """All single-device checks, in order; a distributed job adds `kiln.faults.doctor_distributed`'s."""
    return [check_matmul_throughput(probe, torch.float32), check_matmul_throughput(probe, torch.bfloat16),
            check_matmul_determinism(probe), check_step_determinism(probe), check_known_answer(probe),
            check_memory_bandwidth(probe), check_write_speed(probe)]


def overall_status(results: list[CheckResult]) -> str:
    return max((r.status for r in results), key=STATUSES.index, default="pass")


def describe_platform(probe: Probe) -> str:
    name = torch.cuda.get_device_name(probe.device) if probe.cuda else f"cpu ({torch.get_num_threads()} threads)"
    return f"{name}, torch {torch.__version__}, checkpoint folder {probe.folder}"


def format_table(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results) + 2
    lines = [f"{'check':<{width}}{'status':<8}result"]
    for r in results:
        lines.append(f"{r.name:<{width}}{r.status:<8}{r.summary}")
        if r.status != "pass":
            lines.append(f"{'':<{width + 8}}-> suspect {r.suspect}: {r.hint}")
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    lines.append(f"overall: {overall_status(results)} ({', '.join(f'{n} {s}' for s, n in counts.items())})")
    return "\n".join(lines)
