#!/usr/bin/env python3
"""The PyTorch peer on a GPU: the models of bench/bench_d2l.py (a copy of
../shared/bench/bench_d2l.py, imported, so the networks, batches and
optimizers are the same), moved to a CUDA device and timed with a
synchronize after every step (eager mode). Issue 13's targets compare
d2l's `bench --device cuda` with these figures on the same machine.

    python3 bench/gpu/torch_cuda.py --models mlp,lenet,bn_lenet,resnet18 --out torch-cuda.json
"""
import argparse
import importlib.util
import json
import os
import statistics
import time


def load_harness(bench_dir):
    spec = importlib.util.spec_from_file_location("bench_d2l", os.path.join(bench_dir, "bench_d2l.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def to_device(x, device):
    import torch
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def timed(fn, sync, warmup, min_steps, min_time):
    for _ in range(warmup):
        fn()
    sync()
    ts, start = [], time.perf_counter()
    while len(ts) < min_steps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return dict(steps=len(ts), median=statistics.median(ts), min=min(ts), max=max(ts))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench-dir", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), help="where bench_d2l.py is (default: bench/, a copy of ../shared/bench/bench_d2l.py)")
    p.add_argument("--models", default="mlp,lenet,bn_lenet,resnet18")
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-steps", type=int, default=50)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--out", default="torch-cuda.json")
    a = p.parse_args()
    import torch
    h = load_harness(a.bench_dir)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    results = dict(device=a.device, name=torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu", torch=torch.__version__, models={})
    for name in a.models.split(","):
        spec = h.make_model(name)
        spec["net"] = spec["net"].to(a.device)
        spec["batch"] = to_device(spec["batch"], a.device)
        train_step, infer_step, _ = h.make_steps(spec)
        spec["net"].train()
        train = timed(train_step, sync, a.warmup, a.min_steps, a.min_time)
        spec["net"].eval()
        infer = timed(infer_step, sync, a.warmup, a.min_steps, a.min_time)
        results["models"][name] = dict(batch=spec["batch_size"], train=train, infer=infer)
        print(f"{name:<10} batch {spec['batch_size']:>4}  train {train['median'] * 1e3:8.3f} ms  infer {infer['median'] * 1e3:8.3f} ms", flush=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
