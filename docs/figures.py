"""The site's pictures: loss curves from recorded training runs, and optimizer trajectories.

    python3 -m docs.figures record gpt [--steps 300] [--out docs/data/gpt-loss.json]
    python3 -m docs.figures record gpt --from-checkpoint runs/gpt-1   # a run you already have
    python3 -m docs.figures record mlp [--steps 600] [--out docs/data/mlp-loss.json]
    python3 -m docs.figures record sharpness [--steps 300]          # the GPT, --sharpness-every 25
    python3 -m docs.figures render [--out DIR]                        # the PNGs, to look at

`record` trains through the real API (`symgrad train gpt` for the GPT; `models.mlp.MLPTask` with
`models.trainer.Trainer` for the MLP), reads `history` ([step, train loss]) and `val_history`
([step, val loss]) back from the run's checkpoint, and writes them as JSON under docs/data/,
which is committed. The docs build (docs/hooks.py) renders the PNGs from that data with
matplotlib; no PNG is committed.

The optimizer trajectories drawn here are run at build time by docs/trajectories.py.

Part of the docs, not of the product: nothing in derive/, compiled/ or models/ imports it.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent
if str(DOCS) not in sys.path:  # `python3 -m docs.figures` runs from the repository root
    sys.path.insert(0, str(DOCS))
from trajectories import RUNS, Trajectories, trajectories  # noqa: E402  (docs/trajectories.py)
DATA = DOCS / "data"
DEFAULT_OUT = {"gpt": DATA / "gpt-loss.json", "mlp": DATA / "mlp-loss.json",
               "sharpness": DATA / "gpt-sharpness.json"}
DEFAULT_STEPS = {"gpt": 300, "mlp": 600, "sharpness": 300}
SHARPNESS_EVERY = 25  # steps between sharpness measurements of `record sharpness`
# Where the rendered PNGs live in the site (docs/hooks.py adds them as generated files).
FIGURES_DIR = "figures"
FIGURES = {"gpt": f"{FIGURES_DIR}/gpt-loss.png", "mlp": f"{FIGURES_DIR}/mlp-loss.png",
           "trajectories": f"{FIGURES_DIR}/optimizer-trajectories.png",
           "sharpness": f"{FIGURES_DIR}/gpt-sharpness.png"}
CURVES = ("train", "val", "sharpness")  # the [step, value] lists a recorded run may hold


# --- recording loss curves -------------------------------------------------------------------

def _rounded(rows, digits=5):
    """[step, loss] rows with the loss to `digits` significant digits (small files, small diffs)."""
    return [[int(s), float(f"{float(v):.{digits}g}")] for s, v in rows]


def from_checkpoint(path) -> dict:
    """The loss curves and configuration stored in a symgrad checkpoint (file or run folder)."""
    from symgrad.models import checkpoint

    ck = checkpoint.load(path)
    meta = ck["meta"]
    config = {k: v for k, v in meta.get("config", {}).items() if k != "vocab"}
    out = {"model": meta.get("kind"), "steps": int(meta["step"]), "config": config,
           "train": _rounded(meta.get("history", [])), "val": _rounded(meta.get("val_history", []))}
    if meta.get("sharpness_history"):
        out["sharpness"] = _rounded(meta["sharpness_history"])
    return out


def record_gpt(steps: int, eval_interval: int | None = None, seed: int = 0, extra_args=()) -> dict:
    """Train the GPT with `symgrad train gpt` (reference configuration unless `extra_args` say
    otherwise) into a temporary folder and return its loss curves."""
    from symgrad.train_cmd import train_main

    eval_interval = eval_interval or max(1, steps // 10)
    with tempfile.TemporaryDirectory(prefix="symgrad-record-") as tmp:
        argv = ["gpt", "--steps", str(steps), "--eval-interval", str(eval_interval), "--seed", str(seed),
                "--sample-tokens", "0", *extra_args]
        rc = train_main([*argv, "--out", tmp])
        if rc != 0:
            raise RuntimeError(f"symgrad train {' '.join(argv)} exited with status {rc}")
        data = from_checkpoint(Path(tmp) / "ckpt.npz")
    data["command"] = "symgrad train " + " ".join(argv)
    return data


def record_mlp(steps: int, eval_interval: int | None = None, seed: int = 0, lr: float = 0.01) -> dict:
    """Train the MLP of `symgrad train mlp` (two spirals, Adam lr 0.01, full batch) with
    models.trainer.Trainer and return its loss curves."""
    from symgrad.models.mlp import MLPTask
    from symgrad.models.optim import make_optimizer
    from symgrad.models.trainer import Trainer

    task = MLPTask(seed=seed)
    opt = make_optimizer("adam", task.model.parameters(), lr=lr)
    with tempfile.TemporaryDirectory(prefix="symgrad-record-") as tmp:
        trainer = Trainer(task, task.model, opt, tmp, eval_interval=eval_interval or max(1, steps // 30),
                          progress=False)
        trainer.evaluate()  # the loss before the first step, as step 0
        trainer.run(steps)
        data = from_checkpoint(Path(tmp) / "ckpt.npz")
    data["config"]["train"] = {"optimizer": "adam", "lr": lr}
    data["command"] = f"python3 -m docs.figures record mlp --steps {steps}"
    return data


def write(data: dict, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # One [step, loss] pair per line: small diffs when the data is re-recorded.
    head = {k: v for k, v in data.items() if k not in CURVES}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    curves = [k for k in CURVES if k in data]
    for key in curves:
        rows = ",\n    ".join(json.dumps(r) for r in data[key])
        lines.append(f'  "{key}": [\n    {rows}\n  ]' + ("," if key != curves[-1] else ""))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)
    out.write_text(text)
    return out


def load(model: str, path=None) -> dict:
    return json.loads(Path(path or DEFAULT_OUT[model]).read_text())


def run_summary(model: str, path=None) -> str:
    """Markdown: what the recorded run of `model` was (command, configuration, final losses)."""
    try:
        data = load(model, path)
    except (OSError, ValueError) as e:
        return f'!!! failure "No recorded {model} run"\n\n    {type(e).__name__}: {e}\n'
    rows = [("recorded with", f"`{data.get('command', '?')}`"),
            ("steps", str(data.get("steps", "?")))]
    if data.get("train"):
        last = data["train"][-min(len(data["train"]), 20):]
        rows.append(("train loss", f"{data['train'][0][1]:.3f} at step {data['train'][0][0]}, "
                                   f"{np.mean([v for _, v in last]):.4g} (mean of the last {len(last)} steps)"))
    if data.get("val"):
        (s0, v0), (s1, v1) = data["val"][0], data["val"][-1]
        rows.append(("validation loss", f"{v0:.4g} at step {s0}, {v1:.4g} at step {s1}"))
    conf = data.get("config", {})
    if conf:
        rows.append(("configuration", "`" + json.dumps(conf, separators=(", ", ": ")) + "`"))
    if data.get("recorded_seconds"):
        rows.append(("wall time", f"{data['recorded_seconds']:.0f} s ({data.get('recorded', '')})"))
    name = DEFAULT_OUT[model].name if path is None else Path(path).name
    out = [f"| the run in [`docs/data/{name}`](../data/{name}) | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out) + "\n"


# --- rendering -------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # No timestamp or software tag: the same data gives the same bytes.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def _smooth(v, window):
    """Centred moving mean (no lag), over a shrinking window at the ends."""
    if window <= 1 or len(v) < window:
        return v
    c = np.cumsum(np.insert(np.asarray(v, float), 0, 0.0))
    i = np.arange(len(v))
    lo, hi = np.maximum(i - window // 2, 0), np.minimum(i + window - window // 2, len(v))
    return (c[hi] - c[lo]) / (hi - lo)


def _noisy(v) -> bool:
    """Mini-batch losses jump from step to step; full-batch ones (the MLP) follow a smooth curve."""
    v = np.asarray(v, float)
    return len(v) > 10 and np.median(np.abs(np.diff(v, 2))) > 1e-3 * np.median(np.abs(v))


def loss_figure(data: dict, title: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.0), layout="constrained")
    tr = np.array(data["train"], dtype=float).reshape(-1, 2)
    va = np.array(data["val"], dtype=float).reshape(-1, 2)
    if len(tr):
        window = max(1, len(tr) // 50)
        if _noisy(tr[:, 1]) and window > 1:
            ax.plot(tr[:, 0], tr[:, 1], color="#9fa8da", lw=0.8, label="train loss (per step)")
            ax.plot(tr[:, 0], _smooth(tr[:, 1], window), color="#303f9f", lw=1.6,
                    label=f"train loss (centred mean of {window} steps)")
        else:
            ax.plot(tr[:, 0], tr[:, 1], color="#303f9f", lw=1.6, label="train loss")
    if len(va):
        ax.plot(va[:, 0], va[:, 1], "o-", color="#e65100", lw=1.6, ms=4, label="validation loss")
    losses = np.concatenate([tr[:, 1], va[:, 1]])
    if len(losses) and losses.min() > 0 and losses.max() / losses.min() > 100:
        ax.set_yscale("log")  # a loss that falls by orders of magnitude (the MLP) reads on a log axis
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def sharpness_figure(data: dict, title: str) -> bytes:
    """The recorded run's sharpness (top Hessian eigenvalue on a fixed batch) over its loss."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.2, 5.4), sharex=True, layout="constrained")
    tr = np.array(data["train"], dtype=float).reshape(-1, 2)
    va = np.array(data["val"], dtype=float).reshape(-1, 2)
    sh = np.array(data["sharpness"], dtype=float).reshape(-1, 2)
    if len(tr):
        top.plot(tr[:, 0], _smooth(tr[:, 1], max(1, len(tr) // 50)), color="#303f9f", lw=1.4,
                 label="train loss (smoothed)")
    if len(va):
        top.plot(va[:, 0], va[:, 1], "o-", color="#e65100", lw=1.4, ms=3, label="validation loss")
    top.set_ylabel("loss (nats)")
    top.grid(alpha=0.3)
    top.legend()
    top.set_title(title)
    bottom.plot(sh[:, 0], sh[:, 1], "s-", color="#2e7d32", lw=1.6, ms=4)
    bottom.set_ylabel("top Hessian eigenvalue")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    return _png(fig)


COLORS = {"gradient descent": "#1565c0", "momentum": "#c62828", "RMSprop": "#2e7d32", "Adam": "#6a1b9a"}


def _hyper(name, runs=None):
    cls, hyper = (runs or RUNS)[name]
    return ", ".join(f"{k} {v:g}" for k, v in hyper.items())


def trajectories_figure(t: Trajectories) -> bytes:
    """One panel per optimizer on the same contours (log-spaced levels), start and minimum marked."""
    plt = _pyplot()
    X, Y, F = t.grid
    fig, axes = plt.subplots(2, 2, figsize=(8.4, 6.6), sharex=True, sharey=True, layout="constrained")
    n = len(next(iter(t.paths.values()))) - 1
    for ax, (name, path) in zip(axes.ravel(), t.paths.items()):
        ax.contour(X, Y, np.log10(F + 1e-3), levels=np.linspace(-1.5, 3.5, 16), colors="#b0b0b0",
                   linewidths=0.6, negative_linestyles="solid")
        ax.plot(path[:, 0], path[:, 1], "-", color=COLORS.get(name), lw=1.3)
        ax.plot(path[::25, 0], path[::25, 1], "o", color=COLORS.get(name), ms=2.5)
        ax.plot(*path[0], "ko", ms=5)
        ax.plot(1, 1, "k*", ms=11)
        ax.plot(*path[-1], "s", color=COLORS.get(name), mec="k", ms=6)
        ax.set_title(f"{name} ({_hyper(name)})\nafter {n} steps at ({path[-1, 0]:.2f}, {path[-1, 1]:.2f})",
                     fontsize=10)
        ax.set_xlim(-1.6, 1.4)
        ax.set_ylim(-0.6, 1.6)
    for ax in axes[1]:
        ax.set_xlabel("x")
    for ax in axes[:, 0]:
        ax.set_ylabel("y")
    fig.suptitle("Rosenbrock's function $(1-x)^2 + 100\\,(y-x^2)^2$: start \u25cf (-1.2, 1), "
                 "minimum \u2605 (1, 1), a dot every 25 steps", fontsize=11)
    return _png(fig)


def render_all(data_dir=DATA) -> tuple[dict, list]:
    """{site path: PNG bytes} for every figure, and the problems (a missing data file) as text."""
    out, problems = {}, []
    for model, title in (("gpt", "GPT on tinyshakespeare"), ("mlp", "MLP on two spirals")):
        path = Path(data_dir) / DEFAULT_OUT[model].name
        try:
            data = load(model, path)
        except (OSError, ValueError) as e:
            problems.append(f"loss curve data {path}: {type(e).__name__}: {e}")
            continue
        out[FIGURES[model]] = loss_figure(data, f"{title}: {data.get('steps', '?')} steps")
    path = Path(data_dir) / DEFAULT_OUT["sharpness"].name
    try:
        data = load("sharpness", path)
        out[FIGURES["sharpness"]] = sharpness_figure(data, f"GPT sharpness during training "
                                                           f"(every {data.get('every', '?')} steps)")
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"sharpness data {path}: {type(e).__name__}: {e}")
    try:
        out[FIGURES["trajectories"]] = trajectories_figure(trajectories())
    except Exception as e:  # report it; the build turns it into a warning, so --strict fails
        problems.append(f"optimizer trajectories: {type(e).__name__}: {e}")
    return out, problems


# --- command line ----------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m docs.figures", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("record", help="train a model and write its loss curves as JSON")
    r.add_argument("model", choices=("gpt", "mlp", "sharpness"))
    r.add_argument("--steps", type=int, help="training steps (default: gpt 300, mlp 600)")
    r.add_argument("--out", help="JSON file (default: docs/data/<model>-loss.json)")
    r.add_argument("--eval-interval", type=int, help="steps between validation losses "
                   "(default: steps/10 for gpt, steps/30 for mlp)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--from-checkpoint", metavar="CKPT",
                   help="gpt: read the curves of a finished `symgrad train gpt` run instead of training")
    d = sub.add_parser("render", help="write the PNGs the site shows into a folder")
    d.add_argument("--out", default="figures-out", help="folder (default: figures-out/)")
    a, rest = p.parse_known_args(argv)
    if a.action == "render":
        if rest:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        figs, problems = render_all()
        for path, png in figs.items():
            f = Path(a.out) / Path(path).name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(png)
            print(f"wrote {f}")
        for msg in problems:
            print(f"problem: {msg}", file=sys.stderr)
        return 1 if problems else 0
    if rest and a.model == "mlp":
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if a.steps is not None and a.steps < 1:
        p.error("--steps must be >= 1")
    t0 = time.perf_counter()
    if a.from_checkpoint:
        if a.model != "gpt":
            p.error("--from-checkpoint is for gpt")
        data = from_checkpoint(a.from_checkpoint)
        data["command"] = f"symgrad train gpt (checkpoint {Path(a.from_checkpoint).name})"
    elif a.model == "gpt":
        # Anything else on the line goes to `symgrad train gpt` (e.g. --n-layer 2 for a quick try).
        data = record_gpt(a.steps or DEFAULT_STEPS["gpt"], a.eval_interval, a.seed, rest)
    elif a.model == "sharpness":
        data = record_gpt(a.steps or DEFAULT_STEPS["sharpness"], a.eval_interval, a.seed,
                          ["--sharpness-every", str(SHARPNESS_EVERY), *rest])
        data["every"] = SHARPNESS_EVERY
    else:
        data = record_mlp(a.steps or DEFAULT_STEPS["mlp"], a.eval_interval, a.seed)
    data["recorded_seconds"] = round(time.perf_counter() - t0, 1)
    data["recorded"] = time.strftime("%Y-%m-%d")
    out = write(data, a.out or DEFAULT_OUT[a.model])
    print(f"wrote {out}: {len(data['train'])} train losses, {len(data['val'])} val losses "
          f"(step {data['steps']}), in {data['recorded_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
