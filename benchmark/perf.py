"""``python -m benchmark.perf <what> --json OUT``: performance benchmarks that print JSON.

Speed targets are checked here, never in timed tests: medians over repeats, device named.
``synth``: seconds to generate one synthetic case (maps, label, evidence) at a grid, on one core.
``train``: training throughput (volumes/s, voxels/s; forward + backward + Adam step, batch 2)
and peak memory per architecture at the study grid 48×48×19; each architecture runs in a fresh
process so its peak resident memory (CPU) or ``max_memory_allocated`` (CUDA) is its own. On a
GPU, fp32 and mixed precision are compared.
``lrp``: seconds of each explanation method that explains ``unet3d`` (all but ``reference_lrp``,
which explains ``unet3d_reference`` only) against one gradient (forward + backward to the
input, parameters frozen: the targets are checked against this one; a default backward that also
computes parameter gradients is reported beside it) on ``unet3d`` at the default width (0.25)
and at full width, at 48×48×19, medians over repeats timed round-robin (one call of each per
round); and the study's filter sweep (raw + 10 pass + 5 clamp,
layer-wise) against one LRP pass. Targets: z⁺/ε ≤ 1.5×, γ and α-β ≤ 2.5×, sweep ≤ 4×. The rules
run their convolutions through oneDNN (``explain.rules.conv3d``), the reference gradient through
PyTorch's own dispatch, which is 5–15× slower for batch-1 3-D convolutions with few channels: the
JSON also gives each method against ``lrp_epsilon`` (gradient × input computed with the same
oneDNN adjoints), the comparison free of that difference. Beside every time it gives the
convolution arithmetic counted while it ran (``conv_gflop``, :func:`conv_flops`) and its ratio
(``conv_flop_ratio_*``): the least a time ratio can be at equal efficiency. Exact z⁺ on the
mixed-sign inputs that LeakyReLU gives needs one extra forward and two adjoints per layer
(2.0× a gradient's arithmetic); each layer-wise filter needs its own two adjoints (8.5× one pass
for the study sweep). ``arithmetic_allows_target`` says whether a target lies above that floor.
``onnx``: latency (median over repeats, batch 1) and throughput (batch 4) of PyTorch eager and
onnxruntime on every available provider (TensorRT, CUDA, CPU; the provider actually used is
named) for ``unet3d`` at width 0.25, at the training grid 48×48×19 and a native 192×192×19 grid,
plus static int8 (QDQ) on the CPU with its voxel agreement with fp32 (the Dice change on real
validation cases is what ``mlproject.export --int8-data`` reports). Target on CPU: onnxruntime
≤ 0.6× PyTorch's latency. ``lrp`` in its JSON: onnxruntime (CPU) latency of the exported relevance
graphs of ``lrp_epsilon`` and ``lrp_zplus`` (:mod:`explain.onnx_export`) against ``explain.attribute``
on the same grids, and the export's relative L1 difference.
``sliding``: seconds per native volume (192×192×19 and 256×256×25, X×Y×Z) of Gaussian sliding-window
inference (:mod:`inferers`; patch 96×96×16, overlap 0.5, 4 windows per batch) for ``unet3d`` at width
0.25 in PyTorch eager (:func:`benchmark.evaluation.inference.predict_probability`) and in onnxruntime on
the CPU (:meth:`models.onnx.Segmenter.probability`), timed round-robin with one batch of windows alone:
windows per second, the share of a volume's time outside the network (tiling, stitching, softmax:
``1 − windows / batch × batch time / volume time``, an estimate that noise can push below 0), the ratio
onnxruntime / PyTorch and the largest probability difference of the two. Target on CPU: ≤ 0.6×. Its
``relevance`` (:func:`bench_sliding_relevance`, same patch): sliding-window z⁺ and ε relevance per volume
against windows × one-window LRP (target ≤ 1.2×) and against one full-volume gradient.
``search``: trials per minute, storage overhead per trial and duplicate parameters of one small study
with 1, 2 and 4 workers on SQLite, a journal file and PostgreSQL (:mod:`benchmark.training.scaling`).
``serve``: the served model (``python -m mlproject.serve`` on 127.0.0.1, a local pyfunc of ``unet3d``
at width 0.25 trained on nothing: speed does not depend on the weights) against bare onnxruntime
(:meth:`models.onnx.Segmenter.logits` on the same case's prepared input at the training grid, the
network call inside the served model; and on the case's whole native grid, normalised, which is what
serving cost before the model resampled: the network run at 192×192×19) and against the same
predictor called in-process, per encoding: JSON arrays of a 48×48×19 case, and a native 192×192×19
case as base64 NIfTI (``.nii`` as ISLES ships it, and gzip-compressed); p50/p95 of sequential
requests, bytes in and out. Then a bounded burst (``--burst`` requests, ``--concurrency`` at once,
compact encoding): errors, p50/p95, the server's resident memory (VmRSS) before and after; a request
over the size limit (413, memory unchanged); and a large JSON request (the 192×192×19 case as JSON
numbers, on a server started with a larger limit), sent twice, with the server's RSS idle (after one
small request), at its peak during each request (sampled every 10 ms) and 1 s after it, with and
without ``malloc_trim`` (``STROKELENS_MALLOC_TRIM=0``). Target (#17): served ≤ 2× bare onnxruntime,
compact, at 192×192×19.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from benchmark.atomic import atomic_file
from benchmark.evaluation.robustness import interleaved_medians, median_seconds


def device_info() -> dict:
    """The machine a benchmark ran on."""
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def bench_synth(shape=(192, 192, 19), repeats: int = 5) -> dict:
    """Median seconds to generate one case (in memory) and to write it as NIfTI."""
    import tempfile

    from benchmark.data.synthetic import generate_case, write_dataset

    generate = []
    for i in range(repeats):
        start = time.perf_counter()
        generate_case(0, i + 1, shape)
        generate.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_dataset(Path(tmp) / "d", repeats, shapes=[shape], test_cases=0, progress=False)
        written = (time.perf_counter() - start) / repeats
    return {"benchmark": "synth", "grid_xyz": list(shape), "repeats": repeats,
            "generate_s_median": statistics.median(generate), "generate_and_write_s_mean": written,
            "target_s": 1.0, "meets_target": written < 1.0}


def _train_throughput(name: str, width: float, grid_dhw, batch: int, steps: int, device: str,
                      amp: bool, queue) -> None:
    """Child process: time ``steps`` training steps, put a result dict on ``queue``."""
    import resource

    import torch

    import models
    from benchmark.training.loop import optimizer_step

    torch.manual_seed(0)
    dev = torch.device(device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = models.build(name, 6, width=width).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    x = torch.randn(batch, 6, *grid_dhw, device=dev)
    y = (torch.rand(batch, *grid_dhw, device=dev) > 0.9).float()
    times = []
    for step in range(steps + 2):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y.long())
        optimizer_step(loss, optimizer, scaler)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    voxels = batch * grid_dhw[0] * grid_dhw[1] * grid_dhw[2]
    queue.put({"architecture": name, "width": width, "precision": "amp" if amp else "fp32",
               "parameters": models.parameter_count(model), "step_s_median": step_s,
               "volumes_per_s": batch / step_s, "voxels_per_s": voxels / step_s,
               "peak_memory_mib": peak})


def bench_train(width: float = 0.25, grid_xyz=(48, 48, 19), batch: int = 2, steps: int = 5) -> dict:
    """Training throughput and peak memory per registry architecture (see the module docstring)."""
    import multiprocessing as mp

    import torch

    import models

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = [False, True] if device == "cuda" else [False]
    grid_dhw = (grid_xyz[2], grid_xyz[1], grid_xyz[0])
    ctx = mp.get_context("spawn")
    rows = []
    for name in models.available():
        for amp in precisions:
            queue = ctx.Queue()
            proc = ctx.Process(target=_train_throughput,
                               args=(name, width, grid_dhw, batch, steps, device, amp, queue))
            proc.start()
            rows.append(queue.get(timeout=1800))
            proc.join()
    return {"benchmark": "train", "grid_xyz": list(grid_xyz), "batch": batch, "steps": steps,
            "width": width, "device": device, "results": rows}


def _convolution_flops(x_shape, weight_shape, out_shape, transposed: bool) -> int:
    """2 · multiply-adds of one (transposed) convolution; its adjoint costs the same."""
    if transposed:  # every input point meets the whole kernel
        return 2 * x_shape[0] * x_shape[1] * weight_shape[1] * math.prod(weight_shape[2:]) * math.prod(x_shape[2:])
    return 2 * out_shape[0] * out_shape[1] * weight_shape[1] * math.prod(weight_shape[2:]) * math.prod(out_shape[2:])


def conv_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of every convolution ``fn`` runs, 2 per multiply-add.

    Counted: forward (``aten.convolution``), input/weight gradients (``aten.convolution_backward``)
    and oneDNN calls (``aten.mkldnn_convolution``). Convolutions are nearly all of the arithmetic
    of a 3-D U-Net, so the ratio of two counts is the least the ratio of their times can be at
    equal efficiency.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            op = func._overloadpacket
            if op is aten.convolution:  # input, weight, bias, stride, padding, dilation, transposed, …
                self.total += _convolution_flops(args[0].shape, args[1].shape, out.shape, args[6])
            elif op is aten.mkldnn_convolution:
                self.total += _convolution_flops(args[0].shape, args[1].shape, out.shape, False)
            elif op is aten.convolution_backward:  # grad_out, input, weight, …, transposed (7), …, mask (10)
                once = _convolution_flops(args[1].shape, args[2].shape, args[0].shape, args[7])
                self.total += once * sum(bool(m) for m in args[10][:2])
            return out

    counter = Counter()
    with counter:
        fn()
    return counter.total


def bench_lrp(widths=(0.25, 1.0), grid_xyz=(48, 48, 19), repeats: int = 5) -> dict:
    """Explanation cost relative to one gradient (see the module docstring)."""
    import torch

    import explain
    import models
    from explain.attribution import frozen, target_mask
    from explain.filters import study_sweep

    targets = {"lrp_epsilon": 1.5, "lrp_zplus": 1.5, "lrp_zplus_zbox": 1.5, "study_published": 1.5,
               "epsilon_plus_flat": 1.5, "epsilon_gamma_box": 2.5, "alpha2beta1": 2.5}
    sweep = study_sweep("layer")
    rows = []
    for width in widths:
        torch.manual_seed(0)
        model = models.build("unet3d", 6, width=width).eval()
        x = torch.rand(1, 6, grid_xyz[2], grid_xyz[1], grid_xyz[0])

        def gradient(model=model, x=x):
            with frozen(model):
                xg = x.clone().requires_grad_(True)
                logits = model(xg)
                mask = target_mask(logits.detach())
                torch.autograd.grad(logits[:, 1], xg, mask)

        def full_backward(model=model, x=x):
            xg = x.clone().requires_grad_(True)
            logits = model(xg)
            mask = target_mask(logits.detach())
            (logits[:, 1] * mask).sum().backward()  # parameters require grad, as by default
            model.zero_grad(set_to_none=True)

        timed = [m for m in explain.methods() if not explain.unsupported(model, m)]  # not reference_lrp
        calls = {"gradient": gradient, "full_backward": full_backward}
        calls.update({method: (lambda m=method, model=model, x=x: explain.attribute(model, x, m))
                      for method in timed})
        calls["study_sweep"] = lambda model=model, x=x: explain.lrp_sweep(model, x, "lrp_zplus_zbox", sweep)
        seconds = interleaved_medians(calls, repeats)
        flops = {name: conv_flops(fn) for name, fn in calls.items() if name != "full_backward"}  # not reported
        reference, with_parameters = seconds["gradient"], seconds["full_backward"]
        row = {"architecture": "unet3d", "width": width, "parameters": models.parameter_count(model),
               "gradient_s": reference, "gradient_with_parameter_grads_s": with_parameters,
               "gradient_conv_gflop": flops["gradient"] / 1e9, "methods": {}}
        for method in timed:
            entry = {"seconds": seconds[method], "ratio_to_gradient": seconds[method] / reference,
                     "ratio_to_gradient_with_parameter_grads": seconds[method] / with_parameters,
                     "ratio_to_lrp_epsilon": seconds[method] / seconds["lrp_epsilon"],
                     "conv_gflop": flops[method] / 1e9,
                     "conv_flop_ratio_to_gradient": flops[method] / flops["gradient"]}
            if method in targets:
                entry["target_ratio"] = targets[method]
                entry["meets_target"] = entry["ratio_to_gradient"] <= targets[method]
                entry["arithmetic_allows_target"] = entry["conv_flop_ratio_to_gradient"] <= targets[method]
            row["methods"][method] = entry
        ratio = seconds["study_sweep"] / seconds["lrp_zplus_zbox"]
        row["study_sweep"] = {"filters": len(sweep), "seconds": seconds["study_sweep"], "ratio_to_one_lrp": ratio,
                             "conv_gflop": flops["study_sweep"] / 1e9,
                             "conv_flop_ratio_to_one_lrp": flops["study_sweep"] / flops["lrp_zplus_zbox"],
                             "target_ratio": 4.0, "meets_target": ratio <= 4.0,
                             "arithmetic_allows_target": flops["study_sweep"] / flops["lrp_zplus_zbox"] <= 4.0}
        rows.append(row)
    return {"benchmark": "lrp", "grid_xyz": list(grid_xyz), "repeats": repeats, "timing": "round-robin",
            "results": rows}


def bench_onnx(width: float = 0.25, grids_xyz=((48, 48, 19), (192, 192, 19)), repeats: int = 7) -> dict:
    """Latency and throughput of PyTorch and onnxruntime (see the module docstring)."""
    import tempfile

    import onnxruntime as ort
    import torch

    import models
    from benchmark.data.preprocessing import PreprocessConfig
    from models.onnx import PROVIDER_ORDER, Segmenter, export_onnx, quantize_int8

    torch.manual_seed(0)
    model = models.build("unet3d", 6, width=width).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx(model, Path(tmp) / "model.onnx", PreprocessConfig().to_dict())
        calibration = [torch.rand(1, 6, 19, 48, 48).numpy() for _ in range(4)]
        int8 = Segmenter(quantize_int8(report.onnx_path, Path(tmp) / "model_int8.onnx", calibration),
                         providers=["CPUExecutionProvider"])
        sessions = {}
        for provider in [p for p in PROVIDER_ORDER if p in ort.get_available_providers()]:
            segmenter = Segmenter(report.onnx_path, providers=[provider])
            if segmenter.provider == provider:  # onnxruntime-gpu falls back to CPU silently: skip those
                sessions[provider] = segmenter
        for grid in grids_xyz:
            dhw = (grid[2], grid[1], grid[0])
            single = torch.rand(1, 6, *dhw)
            batch = torch.rand(4, 6, *dhw)
            with torch.no_grad():
                eager = median_seconds(lambda x=single: model(x), repeats)
                eager_batch = median_seconds(lambda x=batch: model(x), max(1, repeats // 2))
            row = {"grid_xyz": list(grid), "pytorch_eager": {"latency_s": eager, "volumes_per_s": 4 / eager_batch}}
            single_np, batch_np = single.numpy(), batch.numpy()
            for provider, segmenter in sessions.items():
                latency = median_seconds(lambda x=single_np, s=segmenter: s.logits(x), repeats)
                throughput = median_seconds(lambda x=batch_np, s=segmenter: s.logits(x), max(1, repeats // 2))
                row[provider] = {"latency_s": latency, "volumes_per_s": 4 / throughput,
                                 "latency_ratio_to_pytorch": latency / eager}
            latency = median_seconds(lambda x=single_np: int8.logits(x), repeats)
            fp32 = sessions["CPUExecutionProvider"].logits(single_np).argmax(1)
            row["CPUExecutionProvider_int8"] = {
                "latency_s": latency, "latency_ratio_to_pytorch": latency / eager,
                "voxel_agreement_with_fp32": float((int8.logits(single_np).argmax(1) == fp32).mean())}
            rows.append(row)
    cpu = rows[0].get("CPUExecutionProvider", {})
    return {"benchmark": "onnx", "architecture": "unet3d", "width": width, "repeats": repeats,
            "max_abs_diff": report.max_abs_diff, "providers": list(sessions), "results": rows,
            "lrp": bench_lrp_onnx(model, grids_xyz, repeats),
            "target_cpu_latency_ratio": 0.6,
            "meets_target": cpu.get("latency_ratio_to_pytorch", float("inf")) <= 0.6}


def bench_sliding(width: float = 0.25, patch_xyz=(96, 96, 16), grids_xyz=((192, 192, 19), (256, 256, 25)),
                  overlap: float = 0.5, batch: int = 4, repeats: int = 5) -> dict:
    """Sliding-window inference per native volume, PyTorch eager against onnxruntime (see the module docstring)."""
    import tempfile

    import numpy as np
    import torch

    import models
    from benchmark.data.preprocessing import PreprocessConfig
    from benchmark.evaluation.inference import predict_probability
    from inferers import SlidingWindow
    from models.onnx import Segmenter, export_onnx

    torch.manual_seed(0)
    model = models.build("unet3d", 6, width=width).eval()
    config = PreprocessConfig(normalization="robust", grid=tuple(patch_xyz), mode="native", spacing=(1.0, 1.0, 5.0),
                              overlap=overlap)
    window = SlidingWindow(config.grid_dhw, overlap=overlap, batch=batch)
    cpu = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx(model, Path(tmp) / "model.onnx", config.to_dict())
        segmenter = Segmenter(report.onnx_path, providers=["CPUExecutionProvider"])
        one_batch = torch.randn(batch, 6, *config.grid_dhw, generator=torch.Generator().manual_seed(1))
        one_batch_np = one_batch.numpy()

        def eager_batch(x=one_batch):
            with torch.no_grad():
                return model(x)

        for grid in grids_xyz:
            dhw = (grid[2], grid[1], grid[0])
            x = torch.randn(1, 6, *dhw, generator=torch.Generator().manual_seed(2))
            x_np = x.numpy()
            padded = [max(n, p) for n, p in zip(dhw, window.patch, strict=True)]
            n_windows = len(window.windows(padded))
            volume = {"pytorch": lambda x=x: predict_probability(model, x, cpu, window=window),
                      "onnxruntime": lambda x=x_np: segmenter.probability(x, window=window)}
            seconds = interleaved_medians({**volume, "pytorch_batch": eager_batch,
                                           "onnxruntime_batch": lambda: segmenter.logits(one_batch_np)}, repeats)
            difference = float(np.abs(volume["pytorch"]().numpy() - volume["onnxruntime"]()).max())
            row = {"grid_xyz": list(grid), "windows": n_windows, "batches": math.ceil(n_windows / batch),
                   "max_abs_probability_difference": difference,
                   "onnx_over_pytorch": seconds["onnxruntime"] / seconds["pytorch"]}
            for name in volume:
                network = n_windows / batch * seconds[f"{name}_batch"]  # the windows alone, at full batches
                row[name] = {"seconds_per_volume": seconds[name], "windows_per_s": n_windows / seconds[name],
                             "batch_of_windows_s": seconds[f"{name}_batch"],
                             "outside_the_network_share": 1.0 - network / seconds[name]}
            rows.append(row)
    return {"benchmark": "sliding", "architecture": "unet3d", "width": width, "patch_xyz": list(patch_xyz),
            "overlap": overlap, "sigma_scale": window.sigma_scale, "batch": batch, "repeats": repeats,
            "timing": "round-robin", "onnx_provider": segmenter.provider, "export_max_abs_diff": report.max_abs_diff,
            "results": rows, "target_onnx_over_pytorch": 0.6,
            "meets_target": all(r["onnx_over_pytorch"] <= 0.6 for r in rows)}


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of a process in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def post(url: str, body: bytes, timeout: float = 300) -> tuple[int, bytes, float]:
    """(HTTP status, answer bytes, seconds) of one JSON POST; an HTTP error is a status, not an exception."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), time.perf_counter() - start
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.perf_counter() - start


@contextlib.contextmanager
def serving(model: str, *flags: str, env: dict | None = None, wait_s: float = 180) -> Iterator[tuple[str, int]]:
    """``python -m mlproject.serve --model MODEL`` on a free loopback port until the block ends.

    Yields:
        (the ``/invocations`` URL, the server's pid).
    """
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH", "")])])}
    server = subprocess.Popen([sys.executable, "-m", "mlproject.serve", "--model", model, "--port", str(port), *flags],
                              env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    raise RuntimeError(f"the server did not start: {server.communicate()[1][-2000:]}") from None
                time.sleep(0.25)
        yield f"{base}/invocations", server.pid
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _percentiles(seconds: Sequence[float]) -> dict:
    import numpy as np

    return {"p50_s": float(np.percentile(seconds, 50)), "p95_s": float(np.percentile(seconds, 95)), "n": len(seconds)}


def _times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls after one warm-up call."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def _case_request(folder: Path, modalities: Sequence[str], encoding: str) -> bytes:
    """The request body of one ISLES case folder: ``arrays`` (JSON numbers), ``nifti`` (.nii) or ``nifti_gz``."""
    import base64
    import gzip

    import nibabel as nib

    files = {m: next(folder.glob(f"*.MR_{m}.*/*.nii*")) for m in modalities}
    if encoding == "arrays":
        images = {m: nib.load(path) for m, path in files.items()}
        inputs = {m: image.get_fdata().tolist() for m, image in images.items()}
        inputs["spacing"] = [float(z) for z in next(iter(images.values())).header.get_zooms()[:3]]
    else:
        def encode(path: Path) -> str:
            raw = path.read_bytes()
            return base64.b64encode(gzip.compress(raw, 6, mtime=0) if encoding == "nifti_gz" else raw).decode()
        inputs = {m: encode(path) for m, path in files.items()}
    return json.dumps({"inputs": inputs}).encode()


def _sample_peak(pid: int, stop, peak: list) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            peak[0] = max(peak[0], rss_mb(pid))
        stop.wait(0.01)


def _memory_probe(model: str, body: bytes, warm_up: bytes, trim: bool, rounds: int = 2) -> dict:
    """The server's RSS idle (after one small request), at its peak during each large request and 1 s after it."""
    import threading

    limit_mb = str(math.ceil(len(body) / 2**20) + 16)
    rows = []
    with serving(model, "--max-request-mb", limit_mb, env={"STROKELENS_MALLOC_TRIM": "1" if trim else "0"}) as (
            url, pid):
        post(url, warm_up)
        time.sleep(1.0)
        idle = rss_mb(pid)
        for _ in range(rounds):
            stop, peak = threading.Event(), [rss_mb(pid)]
            sampler = threading.Thread(target=_sample_peak, args=(pid, stop, peak), daemon=True)
            sampler.start()
            status, _, seconds = post(url, body)
            stop.set()
            sampler.join()
            time.sleep(1.0)
            rows.append({"status": status, "seconds": seconds, "rss_peak_during_mb": peak[0],
                         "rss_after_mb": rss_mb(pid)})
    return {"malloc_trim": trim, "request_mb": len(body) / 2**20, "rss_idle_mb": idle, "requests": rows,
            "rss_after_minus_idle_mb": rows[-1]["rss_after_mb"] - idle}


def bench_serve(width: float = 0.25, repeats: int = 15, burst: int = 200, concurrency: int = 8) -> dict:
    """The served model against bare onnxruntime, a burst, the size limit and memory (module docstring)."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    import torch

    import models
    from benchmark.data.cases import discover, read_case
    from benchmark.data.preprocessing import PreprocessConfig, normalize, prepare
    from benchmark.data.synthetic import write_dataset
    from benchmark.serving import Predictor
    from models.onnx import export_onnx
    from tracking.serving import DEFAULT_MAX_MB, save_pyfunc_model

    torch.manual_seed(0)
    config = PreprocessConfig()
    rows, out = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report = export_onnx(models.build("unet3d", 6, width=width).eval(), tmp / "model.onnx", config.to_dict())
        model = str(save_pyfunc_model(tmp / "pyfunc", report.onnx_path, report.sidecar_path,
                                      "benchmark.serving:load_predictor"))
        predictor = Predictor(report.onnx_path)
        cases = {}
        for grid in ((48, 48, 19), (192, 192, 19)):
            data = write_dataset(tmp / f"data_{grid[0]}", 1, seed=1, shapes=[grid], test_cases=0, progress=False)
            cases[grid] = discover(data, config.modalities, split="train")[0]
        plan = [((48, 48, 19), "arrays"), ((192, 192, 19), "nifti"), ((192, 192, 19), "nifti_gz")]
        bodies = {(grid, enc): _case_request(cases[grid].images[config.modalities[0]].parents[1], config.modalities,
                                             enc) for grid, enc in plan}
        with serving(model) as (url, pid):
            for (grid, encoding), body in bodies.items():
                case = read_case(cases[grid])
                image = prepare(case, config).image[None]
                bare = _times(lambda x=image: predictor.segmenter.logits(x), repeats)
                native = normalize(case.modalities, config)[None]  # the network on the whole native grid
                bare_native = _times(lambda x=native: predictor.segmenter.logits(x), min(repeats, 5))
                inputs = json.loads(body)["inputs"]
                in_process = _times(lambda i=inputs: predictor.predict(i), repeats)
                status, answer, _ = post(url, body)
                served = [post(url, body)[2] for _ in range(repeats)]
                row = {"grid_xyz": list(grid), "encoding": encoding, "status": status,
                       "request_bytes": len(body), "answer_bytes": len(answer),
                       "bare_onnxruntime": _percentiles(bare),
                       "bare_onnxruntime_native_grid": _percentiles(bare_native),
                       "predictor_in_process": _percentiles(in_process),
                       "served": _percentiles(served)}
                row["served_over_bare_p50"] = row["served"]["p50_s"] / row["bare_onnxruntime"]["p50_s"]
                row["served_over_bare_native_grid_p50"] = (row["served"]["p50_s"]
                                                           / row["bare_onnxruntime_native_grid"]["p50_s"])
                row["served_over_in_process_p50"] = row["served"]["p50_s"] / row["predictor_in_process"]["p50_s"]
                rows.append(row)
            body = bodies[((192, 192, 19), "nifti_gz")]
            rss_before = rss_mb(pid)
            start = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(lambda _: post(url, body), range(burst)))
            wall = time.perf_counter() - start
            time.sleep(1.0)
            out["burst"] = {"requests": burst, "concurrency": concurrency, "grid_xyz": [192, 192, 19],
                            "encoding": "nifti_gz", "errors": sum(r[0] != 200 for r in results),
                            **_percentiles([r[2] for r in results]), "wall_s": wall,
                            "requests_per_s": burst / wall, "rss_before_mb": rss_before, "rss_after_mb": rss_mb(pid)}
            too_large = b'{"inputs": "' + b"0" * ((DEFAULT_MAX_MB << 20) + 1024) + b'"}'
            rss_before = rss_mb(pid)
            status, answer, seconds = post(url, too_large)
            out["over_limit"] = {"request_bytes": len(too_large), "status": status, "seconds": seconds,
                                 "answer": answer.decode()[:300], "rss_before_mb": rss_before,
                                 "rss_after_mb": rss_mb(pid)}
        large = _case_request(cases[(192, 192, 19)].images[config.modalities[0]].parents[1], config.modalities,
                              "arrays")
        warm_up = bodies[((48, 48, 19), "arrays")]
        out["large_request_memory"] = [_memory_probe(model, large, warm_up, trim) for trim in (True, False)]
    compact = next(r for r in rows if r["encoding"] == "nifti" and r["grid_xyz"] == [192, 192, 19])
    return {"benchmark": "serve", "architecture": "unet3d", "width": width, "repeats": repeats,
            "training_grid_xyz": list(config.grid), "results": rows, **out,
            "target_served_over_bare": 2.0, "meets_target": compact["served_over_bare_p50"] <= 2.0,
            "meets_target_against_the_native_grid_run": compact["served_over_bare_native_grid_p50"] <= 2.0}


def bench_lrp_onnx(model, grids_xyz, repeats: int, methods=("lrp_epsilon", "lrp_zplus")) -> list[dict]:
    """LRP in onnxruntime (:func:`explain.onnx_export.export_lrp_onnx`) against PyTorch LRP, batch 1, per grid."""
    import tempfile

    import onnxruntime as ort
    import torch

    import explain
    from explain.onnx_export import export_lrp_onnx

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            report = export_lrp_onnx(model, method, Path(tmp) / f"{method}.onnx", torch.rand(1, 6, 19, 48, 48))
            options = ort.SessionOptions()
            options.intra_op_num_threads = os.cpu_count() or 1
            session = ort.InferenceSession(str(report.onnx_path), options, providers=["CPUExecutionProvider"])
            for grid in grids_xyz:
                x = torch.rand(1, 6, grid[2], grid[1], grid[0])
                image = x.numpy()
                eager = median_seconds(lambda x=x, m=method: explain.attribute(model, x, m), repeats)
                latency = median_seconds(lambda x=image, s=session: s.run(["relevance"], {"image": x}), repeats)
                rows.append({"method": method, "grid_xyz": list(grid), "pytorch_lrp_s": eager,
                             "onnxruntime_lrp_s": latency, "latency_ratio_to_pytorch": latency / eager,
                             "relative_l1": report.relative_l1})
    return rows


def bench_sliding_relevance(width: float = 0.25, grids_xyz=((192, 192, 19), (256, 256, 25)),
                            patch_xyz=(96, 96, 19), repeats: int = 3) -> dict:
    """Sliding-window relevance seconds per native volume against its parts and against one gradient.

    ``unet3d`` at ``width``, random weights (speed does not depend on them), one volume (batch 1) per
    grid, windows of ``patch_xyz`` (overlap 0.5, 4 windows per forward pass; :mod:`explain.sliding`).
    For ``lrp_zplus`` and ``lrp_epsilon``: the sliding-window relevance of the whole volume
    (``explain.attribute(..., window=)``: stitched prediction for the target mask, every window
    explained from its share, relevance summed) against (a) windows × one one-window LRP
    (``explain.attribute`` on one patch, batch 1; target: sliding ≤ 1.2× that, i.e. the stitched
    prediction, shares and stitching cost under 20 %) and (b) one gradient of the whole volume at
    once (forward + backward to the input, parameters frozen). Medians over ``repeats`` rounds,
    timed round-robin (:func:`benchmark.evaluation.robustness.interleaved_medians`).
    """
    import torch

    import explain
    import models
    from explain.attribution import frozen, target_mask
    from inferers import SlidingWindow

    methods = ("lrp_zplus", "lrp_epsilon")
    torch.manual_seed(0)
    model = models.build("unet3d", 6, width=width).eval()
    patch = (patch_xyz[2], patch_xyz[1], patch_xyz[0])
    window = SlidingWindow(patch)
    one = torch.rand(1, 6, *patch)
    rows = []
    for grid in grids_xyz:
        x = torch.rand(1, 6, grid[2], grid[1], grid[0])
        padded = [max(s, p) for s, p in zip(x.shape[2:], patch, strict=True)]
        count = len(window.windows(padded))

        def gradient(x=x):
            with frozen(model):
                xg = x.clone().requires_grad_(True)
                logits = model(xg)
                torch.autograd.grad(logits[:, 1], xg, target_mask(logits.detach()))

        calls = {"gradient": gradient}
        for method in methods:
            calls[f"{method}_window"] = lambda m=method: explain.attribute(model, one, m)
            calls[f"{method}_sliding"] = lambda m=method, x=x: explain.attribute(model, x, m, window=window)
        seconds = interleaved_medians(calls, repeats)
        row = {"grid_xyz": list(grid), "windows": count, "full_volume_gradient_s": seconds["gradient"],
               "methods": {}}
        for method in methods:
            sliding, parts = seconds[f"{method}_sliding"], count * seconds[f"{method}_window"]
            row["methods"][method] = {
                "sliding_s": sliding, "one_window_s": seconds[f"{method}_window"], "windows_x_one_window_s": parts,
                "windows_per_s": count / sliding, "ratio_to_windows_x_one_window": sliding / parts,
                "stitching_share": 1.0 - parts / sliding,
                "ratio_to_full_volume_gradient": sliding / seconds["gradient"],
                "target_ratio": 1.2, "meets_target": sliding / parts <= 1.2}
        rows.append(row)
    return {"benchmark": "sliding_relevance", "architecture": "unet3d", "width": width,
            "parameters": models.parameter_count(model), "patch_xyz": list(patch_xyz), "overlap": window.overlap,
            "windows_per_batch": window.batch, "repeats": repeats, "timing": "round-robin", "results": rows,
            "device_info": device_info()}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark and write/print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__)
    parser.add_argument("what", choices=["synth", "train", "lrp", "onnx", "sliding", "search", "serve"])
    parser.add_argument("--width", type=float, default=0.25, help="train: width multiplier")
    parser.add_argument("--steps", type=int, default=5, help="train: timed steps per architecture")
    parser.add_argument("--json", default="", help="write the result here too")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--burst", type=int, default=200, help="serve: requests in the burst")
    parser.add_argument("--concurrency", type=int, default=8, help="serve: requests in flight during the burst")
    args = parser.parse_args(argv)
    if args.what == "synth":
        import torch

        torch.set_num_threads(1)
        result = bench_synth(repeats=args.repeats)
    elif args.what == "train":
        result = bench_train(width=args.width, steps=args.steps)
    elif args.what == "lrp":
        result = bench_lrp(repeats=args.repeats)
    elif args.what == "sliding":
        result = bench_sliding(repeats=args.repeats)
        result["relevance"] = bench_sliding_relevance(patch_xyz=tuple(result["patch_xyz"]), repeats=args.repeats)
    elif args.what == "search":
        from benchmark.training.scaling import bench_search

        result = bench_search()
    elif args.what == "serve":
        result = bench_serve(repeats=max(args.repeats, 5), burst=args.burst, concurrency=args.concurrency)
    else:
        result = bench_onnx(repeats=args.repeats)
    result["device_info"] = device_info()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
