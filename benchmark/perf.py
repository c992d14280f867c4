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
``search``: trials per minute, storage overhead per trial and duplicate parameters of one small study
with 1, 2 and 4 workers on SQLite, a journal file and PostgreSQL (:mod:`benchmark.training.scaling`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark and write/print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__)
    parser.add_argument("what", choices=["synth", "train", "lrp", "onnx", "search"])
    parser.add_argument("--width", type=float, default=0.25, help="train: width multiplier")
    parser.add_argument("--steps", type=int, default=5, help="train: timed steps per architecture")
    parser.add_argument("--json", default="", help="write the result here too")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.what == "synth":
        import torch

        torch.set_num_threads(1)
        result = bench_synth(repeats=args.repeats)
    elif args.what == "train":
        result = bench_train(width=args.width, steps=args.steps)
    elif args.what == "lrp":
        result = bench_lrp(repeats=args.repeats)
    elif args.what == "search":
        from benchmark.training.scaling import bench_search

        result = bench_search()
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
