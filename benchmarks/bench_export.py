"""Export benchmarks for issue 3 (figures go to benchmarks/RESULTS.md).

    python benchmarks/bench_export.py                         # train LeNet-5 on full MNIST, then everything
    python benchmarks/bench_export.py --run runs/lenet5-...   # use an existing LeNet-5 MNIST run
    python benchmarks/bench_export.py --only lenet            # just the LeNet-5 targets
    python benchmarks/bench_export.py --only table2 --paper-size 224

``lenet``: LeNet-5 on full MNIST exported with ``train.export.export_bundle`` exactly as the CLI
does (cpu, rpi, rpi + 80 % pruning, jetson), judged on the official 10k test set:

- INT8 accuracy within 0.1 pt of float;
- 80 % sparsity + INT8 within 0.3 pt;
- INT8 file <= 0.27x the float file;
- pruned + INT8 gzip <= 0.15x the float gzip;
- batch-1 LiteRT latency of every artefact.

``table2``: seed 001's Table II CNN (``paper_cnn``: 25.7 M parameters at 224x224x3) float vs
INT8 vs pruned INT8, size and accuracy, next to ``resnet_small``. Trained briefly on MNIST
resized to the input size (stated in the output); at 224x224x3 a stratified subset is used so
that it fits in minutes on a 2-core CPU.

Writes ``benchmarks/results/export.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SHARED = Path(os.environ.get("EDGECLF_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
CACHE = HERE / "cache"
RESULTS = HERE / "results"
MNIST = SHARED / "mnist"


def _pts(a: float, b: float) -> float:
    return round((a - b) * 100, 3)


# --------------------------------------------------------------------------- LeNet-5


def lenet_run(run: str | None, epochs: int) -> Path:
    if run:
        return Path(run)
    from train.config import TrainConfig
    from train.fit import run_training

    config = TrainConfig(
        model="lenet5", data=str(MNIST), epochs=epochs, batch_size=128, runs_dir=str(CACHE / "export_runs"),
        run_name="lenet5-mnist-full", tensorboard=False, verbose=2,
    )
    existing = CACHE / "export_runs" / "lenet5-mnist-full"
    if (existing / "model.keras").is_file() and (existing / "run.json").is_file():
        print(f"using cached run {existing}")
        return existing
    t0 = time.perf_counter()
    path = run_training(config, evaluate=False)
    print(f"trained LeNet-5 on full MNIST in {time.perf_counter() - t0:.0f} s: {path}")
    return path


def bench_lenet(run_dir: Path, out_root: Path, sparsity: float, qat: bool) -> dict:
    from train.export import export_bundle

    jobs = {
        "cpu": dict(target="cpu"),
        "rpi_int8": dict(target="rpi"),
        f"rpi_int8_pruned{int(sparsity * 100)}": dict(target="rpi", sparsity=sparsity),
        "jetson": dict(target="jetson"),
    }
    if qat:
        jobs["rpi_int8_pruned_qat"] = dict(target="rpi", sparsity=sparsity, qat=True)
    reports = {}
    for name, kw in jobs.items():
        t0 = time.perf_counter()
        res = export_bundle(run=run_dir, out=out_root / name, max_accuracy_drop=100.0, **kw)
        reports[name] = res.report
        print(f"  exported {name} in {time.perf_counter() - t0:.0f} s")

    ref = reports["cpu"]
    float_test = ref["float"]["accuracy"]["test"]
    float_bytes = ref["artefacts"][0]["size_bytes"]  # model.tflite float32, labels embedded
    float_gzip = ref["artefacts"][0]["gzip_bytes"]
    rows = []
    for name, rep in reports.items():
        for a in rep["artefacts"]:
            rows.append({
                "export": name,
                "file": a["file"],
                "quantization": a["quantization"],
                "sparsity": rep["sparsity"]["overall"],
                "test_accuracy": a["accuracy"]["test"],
                "val_accuracy": a["accuracy"]["validation"],
                "drop_pts": _pts(float_test, a["accuracy"]["test"]),
                "size_bytes": a["size_bytes"],
                "gzip_bytes": a["gzip_bytes"],
                "size_x_float": round(a["size_bytes"] / float_bytes, 4),
                "gzip_x_float_gzip": round(a["gzip_bytes"] / float_gzip, 4),
                "p50_ms": a["latency"]["p50_ms"],
                "p95_ms": a["latency"]["p95_ms"],
                "runtime": a["latency"].get("runtime", "ai_edge_litert"),
            })
    pr = f"rpi_int8_pruned{int(sparsity * 100)}"
    int8 = reports["rpi_int8"]["artefacts"][0]
    pruned = reports[pr]["artefacts"][0]
    checks = {
        "int8_within_0.1pt": {"drop_pts": _pts(float_test, int8["accuracy"]["test"]), "limit": 0.1},
        f"pruned{int(sparsity * 100)}_int8_within_0.3pt": {"drop_pts": _pts(float_test, pruned["accuracy"]["test"]), "limit": 0.3},
        "int8_file_le_0.27x_float": {"ratio": round(int8["size_bytes"] / float_bytes, 4), "limit": 0.27},
        "pruned_int8_gzip_le_0.15x_float_gzip": {"ratio": round(pruned["gzip_bytes"] / float_gzip, 4), "limit": 0.15},
    }
    for c in checks.values():
        value = c.get("drop_pts", c.get("ratio"))
        c["pass"] = value <= c["limit"]
    return {
        "run": str(run_dir),
        "test_images": ref["float"]["n"].get("test"),
        "float_test_accuracy": float_test,
        "float_val_accuracy": ref["float"]["accuracy"]["validation"],
        "float_tflite_bytes": float_bytes,
        "float_tflite_gzip_bytes": float_gzip,
        "pruning": reports[pr]["optimizations"].get("pruning"),
        "sparsity_layers": reports[pr]["sparsity"]["layers"],
        "onnx": {k: v for k, v in reports["jetson"].get("onnx", {}).items() if k != "trtexec"},
        "gpu_compatible": reports["jetson"]["gpu_compatibility"]["compatible"],
        "threads": reports["cpu"]["machine"]["measuring_threads"],
        "rows": rows,
        "checks": checks,
    }


# --------------------------------------------------------------------------- Table II vs resnet_small


def _resized_subset(ds, n: int, size: int, colour: str, seed: int):
    import cv2

    from train.data import Dataset, stratified_sample

    sub = stratified_sample(ds, n, seed=seed) if n < len(ds) else ds
    if size == sub.x.shape[1] and colour == "grey":
        return sub
    x = np.stack([cv2.resize(img[..., 0], (size, size), interpolation=cv2.INTER_LINEAR) for img in sub.x])[..., None]
    if colour == "rgb":
        x = np.repeat(x, 3, axis=-1)
    return Dataset(x=x, y=sub.y, class_names=sub.class_names, source=f"{sub.source} resized {size}x{size} {colour}")


def bench_model(name: str, size: int, colour: str, n_train: int, n_test: int, epochs: int, sparsity: float,
                batch_size: int, prune_epochs: int = 2, seed: int = 42, **model_kw) -> dict:
    from train import export as opt
    from train import models
    from train._tf import keras
    from train.data import load_dataset
    from train.data.pipeline import make_tf_dataset
    from train.export import predict_keras

    keras.utils.set_random_seed(seed)
    full_train = load_dataset(str(MNIST), split="train")
    full_test = load_dataset(str(MNIST), split="test")
    train = _resized_subset(full_train, n_train, size, colour, seed)
    test = _resized_subset(full_test, n_test, size, colour, seed)
    channels = 3 if colour == "rgb" else 1
    model = models.create_model(name, (size, size, channels), 10, **model_kw)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(make_tf_dataset(train, batch_size, training=True, seed=seed), epochs=epochs, verbose=2)
    # A few hundred steps leave BatchNormalization's moving averages behind the weights.
    opt.recalibrate_batchnorm(model, train.x, seed=seed)
    train_s = time.perf_counter() - t0
    acc = lambda scores: float((scores.argmax(1) == test.y).mean())  # noqa: E731
    out = {
        "model": name, "input": f"{size}x{size}x{channels}", "params": int(model.count_params()),
        "train_images": len(train), "test_images": len(test), "epochs": epochs, "prune_epochs": prune_epochs,
        "train_seconds": round(train_s, 1),
        "artefacts": [],
    }
    threads = opt.measuring_threads(None)
    calib = opt.calibration_set(train, 200, seed=seed)

    def add(label, tfl, kind, sp=0.0):
        t = time.perf_counter()
        a = acc(opt.predict_tflite(tfl, test.x, batch_size=64, num_threads=threads))
        lat = opt.latency_tflite(tfl, test.x[:1], num_threads=threads, runs=50, max_seconds=20)
        out["artefacts"].append({
            "artefact": label, "quantization": kind, "size_bytes": len(tfl), "gzip_bytes": opt.gzip_size(tfl),
            "test_accuracy": a, "sparsity": sp, "p50_ms": lat["p50_ms"], "p95_ms": lat["p95_ms"],
        })
        print(f"  {name} {label}: acc {a:.4f}, {len(tfl):,} B, gzip {out['artefacts'][-1]['gzip_bytes']:,} B, "
              f"p50 {lat['p50_ms']} ms ({time.perf_counter() - t:.0f} s)", flush=True)

    out["keras_float_test_accuracy"] = acc(predict_keras(model, test.x, batch_size=64))
    add("float32", opt.convert(model, "float32"), "float32")
    add("int8", opt.convert(model, "full_int8", representative=calib), "full_int8")
    t = time.perf_counter()
    pruned = opt.prune(model, train, sparsity=sparsity, epochs=prune_epochs, batch_size=batch_size, min_steps=0)
    out["prune_seconds"] = round(time.perf_counter() - t, 1)
    sp = opt.sparsity_report(pruned)["overall"]
    out["pruned_float_test_accuracy"] = acc(predict_keras(pruned, test.x, batch_size=64))
    add(f"pruned{int(sparsity * 100)}_int8", opt.convert(pruned, "full_int8", representative=calib), "full_int8", sp)
    return out


TABLE2 = {
    # key: (model, input size, colour, train images, test images, epochs, batch size)
    "paper_cnn": ("paper_cnn", None, "rgb", None, None, 1, 32),
    "paper_cnn_28": ("paper_cnn", 28, "grey", 54000, 10000, 2, 128),
    "resnet_small": ("resnet_small", 28, "grey", 12000, 10000, 2, 128),
}


def bench_table2(keys: list[str], paper_size: int, paper_train: int, paper_test: int, sparsity: float, previous: dict) -> dict:
    res = dict(previous)
    for key in keys:
        name, size, colour, n_train, n_test, epochs, batch = TABLE2[key]
        size = size or paper_size
        n_train = n_train or paper_train
        n_test = n_test or paper_test
        print(f"{name} at {size}x{size} {colour} on {n_train} MNIST images ({epochs} epoch(s)):", flush=True)
        res[key] = bench_model(name, size, colour, n_train, n_test, epochs=epochs, sparsity=sparsity, batch_size=batch)
    return res


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="existing LeNet-5 MNIST run directory (default: train one, cached)")
    p.add_argument("--epochs", type=int, default=12, help="LeNet-5 training epochs when training here")
    p.add_argument("--only", nargs="*", choices=["lenet", "table2"], default=["lenet", "table2"])
    p.add_argument("--sparsity", type=float, default=0.8)
    p.add_argument("--qat", action="store_true", help="also export pruned + QAT INT8")
    p.add_argument("--paper-size", type=int, default=224, help="paper_cnn input size (224 = Table II, 25.7 M params)")
    p.add_argument("--paper-train", type=int, default=3000, help="MNIST images to train paper_cnn on at --paper-size")
    p.add_argument("--paper-test", type=int, default=2000, help="MNIST test images for paper_cnn at --paper-size")
    p.add_argument("--table2-models", nargs="*", choices=list(TABLE2), default=list(TABLE2),
                   help="which Table II comparison models to (re)run; others keep their previous figures")
    args = p.parse_args(argv)

    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / "export.json"
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    results["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()}
    cmd = "python benchmarks/bench_export.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["command"] = cmd  # the last one; each section keeps its own
    if "lenet" in args.only:
        run_dir = lenet_run(args.run, args.epochs)
        t0 = time.perf_counter()
        results["lenet5"] = bench_lenet(run_dir, CACHE / "export_bundles", args.sparsity, args.qat)
        results["lenet5"]["seconds"] = round(time.perf_counter() - t0, 1)
        results["lenet5"]["command"] = cmd
        _print_lenet(results["lenet5"])
        out_path.write_text(json.dumps(results, indent=2) + "\n")
    if "table2" in args.only:
        results["table2"] = bench_table2(args.table2_models, args.paper_size, args.paper_train, args.paper_test, args.sparsity,
                                         {k: v for k, v in results.get("table2", {}).items() if isinstance(v, dict)})
        for key in args.table2_models:
            results["table2"][key]["command"] = cmd
        _print_table2(results["table2"])
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


def _print_lenet(r: dict) -> None:
    print(f"\nLeNet-5 on MNIST: float test accuracy {r['float_test_accuracy']:.4f} (10k test images), "
          f"float .tflite {r['float_tflite_bytes']:,} B (gzip {r['float_tflite_gzip_bytes']:,} B)")
    print(f"{'export':<22} {'file':<28} {'quant':<14} {'test acc':>8} {'drop':>7} {'bytes':>9} {'x float':>7} "
          f"{'gzip':>8} {'x fgz':>6} {'p50 ms':>8} {'p95 ms':>8}")
    for row in r["rows"]:
        print(f"{row['export']:<22} {row['file']:<28} {row['quantization']:<14} {row['test_accuracy']:>8.4f} {row['drop_pts']:>7.2f} "
              f"{row['size_bytes']:>9,} {row['size_x_float']:>7.3f} {row['gzip_bytes']:>8,} {row['gzip_x_float_gzip']:>6.3f} "
              f"{row['p50_ms']:>8.4f} {row['p95_ms']:>8.4f}")
    for name, c in r["checks"].items():
        value = c.get("drop_pts", c.get("ratio"))
        print(f"  {'PASS' if c['pass'] else 'MISS'} {name}: {value} (limit {c['limit']})")


def _print_table2(r: dict) -> None:
    print(f"\n{'model':<14} {'input':<10} {'params':>11} {'artefact':<14} {'test acc':>8} {'bytes':>12} {'gzip':>12} {'p50 ms':>8}")
    for key, m in r.items():
        if not isinstance(m, dict):
            continue
        for a in m["artefacts"]:
            print(f"{m['model']:<14} {m['input']:<10} {m['params']:>11,} {a['artefact']:<14} {a['test_accuracy']:>8.4f} "
                  f"{a['size_bytes']:>12,} {a['gzip_bytes']:>12,} {a['p50_ms']:>8.3f}")


if __name__ == "__main__":
    sys.exit(main())
