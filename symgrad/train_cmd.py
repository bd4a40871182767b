"""`symgrad train`, `symgrad sample` and `symgrad bench train`. The GPT's run is here; the other
models' runs are in symgrad/train_small.py.

    symgrad train gpt|mlp|rnn|lstm|word2vec|cnn [--steps N --lr X --optimizer NAME --batch-size B
                                                  --seed S --out DIR --resume CKPT ...]
    symgrad sample CHECKPOINT [--tokens N --temperature T --top-k K --prompt TEXT --seed S]
    symgrad bench train [--peer eager|fused|compile|all] [--load [N]] [--threads N] [--rounds R]
                        [--steps S] [--profile] [--json]

Bad input (a missing or corrupt checkpoint, one from another config, an empty or too short text,
an unknown optimizer or model, a negative or NaN learning rate) is reported in one line on
stderr with exit status 2; nothing is written before the input has been checked, and an existing
checkpoint is never overwritten by a new run. An --out that cannot hold a checkpoint is refused
before training; a run that diverges stops and keeps its last finite checkpoint.

Under `mpirun -n K` (mpi4py installed, `pip install -e ".[mpi]"`) `symgrad train gpt` trains
data-parallel: --batch-size is the global batch, split over the K ranks; rank 0 alone prints and
writes checkpoints, and a checkpoint resumes under any K (see models/distributed.py).

--resume CKPT continues that run and writes back to CKPT itself. It keeps the checkpoint's model
shape, batch size, seed, vocabulary and optimizer (giving another is refused), and its learning
rate, schedule, weight decay, gradient clipping, eval interval and total steps unless --lr,
--schedule, --weight-decay, --max-grad-norm, --eval-interval or --steps are given again.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from symgrad.usage import Parser, UsageError

MODELS = ("gpt", "mlp", "rnn", "lstm", "word2vec", "cnn")


def _int_at_least(lo):
    """An argparse type: an integer >= lo, else one line saying what was expected."""
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v
    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _lr(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"learning rate must be a number, got {s!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"learning rate must be a finite number >= 0, got {s}")
    return v


def _fail(prog, msg) -> int:
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


# --- symgrad train -------------------------------------------------------------------------
GPT_SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "dtype")


def _train_parser():
    p = Parser(prog="symgrad train", description="Train a model with the JIT-compiled kernels.")
    p.add_argument("model", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--steps", type=_positive_int, help="total training steps (default per model; epochs for cnn)")
    p.add_argument("--lr", type=_lr, help="learning rate (default per model/optimizer)")
    p.add_argument("--optimizer", help="sgd, gd, momentum, nesterov, adagrad, rmsprop, adam, adamw; "
                   "newton-cg (mlp: full-batch Newton-CG on whole-model HVPs, --steps Newton iterations)")
    p.add_argument("--schedule", default="constant", help="constant, step, cosine")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default: runs/<model>-<n>, a new one)")
    p.add_argument("--resume", metavar="CKPT", help="continue the run saved in this checkpoint")
    p.add_argument("--text", help="training text (default: the shipped tinyshakespeare)")
    p.add_argument("--eval-interval", type=_positive_int)
    p.add_argument("--sharpness-every", type=_positive_int, metavar="N",
                   help="gpt: every N steps, the loss Hessian's top eigenvalue on a fixed batch (Lanczos over "
                        "whole-model HVPs), printed and kept in the checkpoint's sharpness_history")
    p.add_argument("--max-grad-norm", type=float, help="clip gradients to this global norm")
    p.add_argument("--weight-decay", type=float,
                   help="the optimizer's weight decay (gpt with adamw: 0.1, models.tasks.GPTTask.weight_decay)")
    p.add_argument("--n-layer", type=_positive_int)
    p.add_argument("--n-head", type=_positive_int)
    p.add_argument("--n-embd", type=_positive_int)
    p.add_argument("--block-size", type=_positive_int)
    p.add_argument("--hidden", type=_positive_int, help="hidden size (mlp, rnn, lstm)")
    p.add_argument("--dtype", choices=("float32", "float64"))
    p.add_argument("--sample-tokens", type=int, default=300, help="characters sampled at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _new_out_dir(model: str) -> Path:
    n = 1
    while Path("runs", f"{model}-{n}").exists():
        n += 1
    return Path("runs", f"{model}-{n}")


def train_main(argv) -> int:
    from symgrad.models.checkpoint import CheckpointError
    from symgrad.models.distributed import DistributedError, world
    from symgrad.models.sample import SampleError
    try:
        w = world()  # under mpirun -n K: the MPI world (mpi4py), else one process
    except DistributedError as e:
        return _fail("symgrad train", e)
    try:
        return _train(list(argv))
    except DistributedError as e:  # raised on every rank alike (the ranks agreed on it)
        return _fail("symgrad train", e) if w.root else 2
    except (UsageError, CheckpointError, SampleError) as e:
        msg = w.fail(str(e))  # MPI: the ranks agree on it, rank 0 prints one line
        return _fail("symgrad train", msg) if msg is not None else 2
    except SystemExit:
        raise
    except BaseException:
        if w.size > 1:  # a lone failure: stop the job, not leave the other ranks waiting
            import traceback
            traceback.print_exc()
            w.abort(1)
        raise


def _common_checks(a):
    from symgrad.models import newton
    from symgrad.models.optim import OPTIMIZERS
    from symgrad.models.schedules import SCHEDULES
    if a.model not in MODELS:
        raise UsageError(f"unknown model '{a.model}'; choose one of: {', '.join(MODELS)}")
    if a.sharpness_every is not None and a.model != "gpt":
        raise UsageError(f"--sharpness-every is measured for gpt, not {a.model}")
    if a.optimizer == newton.NAME and a.model != "mlp":
        raise UsageError(f"--optimizer {newton.NAME} trains the mlp (full batch), not {a.model}")
    if a.optimizer is not None and a.optimizer not in OPTIMIZERS and a.optimizer != newton.NAME:
        raise UsageError(f"unknown optimizer '{a.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}, "
                         f"{newton.NAME} (mlp)")
    if a.schedule not in SCHEDULES:
        raise UsageError(f"unknown schedule '{a.schedule}'; choose one of: {', '.join(SCHEDULES)}")
    for name in ("max_grad_norm", "weight_decay"):
        v = getattr(a, name)
        if v is not None and (not math.isfinite(v) or v < 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")


def _train(argv) -> int:
    a = _train_parser().parse_args(argv)
    _common_checks(a)
    from symgrad.models.distributed import world
    if world().size > 1 and a.model != "gpt":
        raise UsageError(f"data-parallel training (mpirun, {world().size} ranks) is implemented for gpt, not "
                         f"{a.model}; run it in one process")
    if a.model == "gpt":
        return _train_gpt(a)
    from symgrad import train_small
    return train_small.train(a)


def out_dir(a) -> Path:
    """--out, or a new runs/<model>-<n>; refused when it holds a checkpoint or cannot hold one."""
    from symgrad.models import checkpoint
    out = Path(a.out) if a.out else _new_out_dir(a.model)
    if (out / "ckpt.npz").exists():
        raise UsageError(f"{out / 'ckpt.npz'} exists; pass --resume {out} to continue it, or another --out")
    checkpoint.check_target(out / "ckpt.npz")  # a regular file in the way: say so before training
    return out


def load_resume(a, kind):
    """The checkpoint of --resume, refused unless it is from a `kind` run."""
    from symgrad.models import checkpoint
    try:
        ck = checkpoint.load(a.resume)
    except checkpoint.CheckpointError as e:
        raise UsageError(str(e)) from None
    if ck["meta"].get("kind") != kind:
        raise UsageError(f"checkpoint {ck['path']} is from a '{ck['meta'].get('kind')}' run, not '{kind}'")
    return ck


def _train_gpt(a) -> int:
    from symgrad.models.data import DataError, read_text
    from symgrad.models.gpt import GPTConfig
    from symgrad.models.optim import make_optimizer
    from symgrad.models import checkpoint
    from symgrad.models.sample import default_prompt, generate
    from symgrad.models.schedules import make_schedule
    from symgrad.models.tasks import GPTTask
    from symgrad.models.trainer import Trainer

    ck = None
    if a.resume:
        ck = load_resume(a, "gpt")
        if a.out is not None and Path(a.out).resolve() != ck["path"].parent.resolve():
            raise UsageError(f"--out {a.out} with --resume: a resumed run writes back to "
                             f"{ck['path']}; leave out --out")
        conf = ck["meta"]["config"]
        try:
            saved = conf["model"]
            for k in GPT_SHAPE:
                v = getattr(a, k)
                if v is not None and v != saved[k]:
                    raise UsageError(f"checkpoint {ck['path']} is from another config: {k}={saved[k]}, "
                                     f"not {v}")
            if a.batch_size is not None and a.batch_size != conf["batch_size"]:
                raise UsageError(f"checkpoint {ck['path']} is from another config: batch_size="
                                 f"{conf['batch_size']}, not {a.batch_size}")
            cfg = GPTConfig(**saved)
            batch, seed, vocab = conf["batch_size"], conf["seed"], conf["vocab"]
        except (KeyError, TypeError) as e:
            raise UsageError(f"corrupt checkpoint {ck['path']}: its config is incomplete "
                             f"({type(e).__name__}: {e})") from None
        train_conf = conf.get("train", {})
        out = ck["path"].parent
    else:
        cfg = GPTConfig()
        for k in GPT_SHAPE:
            if getattr(a, k) is not None:
                setattr(cfg, k, getattr(a, k))
        if cfg.n_embd % cfg.n_head:
            raise UsageError(f"--n-embd {cfg.n_embd} is not a multiple of --n-head {cfg.n_head}")
        batch, seed, train_conf = a.batch_size or 12, a.seed, {}
        out = out_dir(a)
    opt_name = a.optimizer or train_conf.get("optimizer", "adamw")
    lr = a.lr if a.lr is not None else train_conf.get("lr", 1e-3)
    steps = a.steps or train_conf.get("steps", 500)
    schedule = a.schedule if a.schedule != "constant" or not train_conf else train_conf.get("schedule", "constant")
    if ck is not None and opt_name != train_conf.get("optimizer", opt_name):
        raise UsageError(f"checkpoint {ck['path']} was trained with optimizer "
                         f"'{train_conf['optimizer']}', not '{opt_name}'")
    try:
        text = read_text(a.text)
        if ck is not None and sorted(set(text)) != sorted(vocab):
            raise UsageError("the text's characters differ from the checkpoint's vocabulary")
        task = GPTTask(cfg, text, batch_size=batch, seed=seed)
    except DataError as e:
        raise UsageError(str(e)) from None
    hyper = {}
    if a.weight_decay is not None:
        hyper["wd"] = a.weight_decay
    elif opt_name == "adamw":
        hyper["wd"] = train_conf.get("wd", GPTTask.weight_decay)
    try:
        opt = make_optimizer(opt_name, task.model.parameters(), schedule=make_schedule(schedule, lr, steps),
                             max_grad_norm=a.max_grad_norm if a.max_grad_norm is not None
                             else train_conf.get("max_grad_norm"), **hyper)
    except ValueError as e:
        raise UsageError(str(e)) from None
    eval_interval = a.eval_interval or train_conf.get("eval_interval") or max(1, min(250, steps // 5))
    task.train_conf = {"optimizer": opt_name, "lr": lr, "steps": steps, "schedule": schedule,
                       "wd": hyper.get("wd"), "max_grad_norm": opt.max_grad_norm,
                       "eval_interval": eval_interval}
    base_config = task.config

    def config():
        return dict(base_config(), train=task.train_conf)

    task.config = config
    trainer = Trainer(task, task.model, opt, out, eval_interval=eval_interval, progress=not a.no_progress,
                      sharpness_every=a.sharpness_every or 0)
    say = print if trainer.world.root else (lambda *a: None)  # under MPI, rank 0 alone prints
    if ck is not None:
        try:
            trainer.restore(ck)
        except checkpoint.CheckpointError:  # already one line naming the file (train_main)
            raise
        except ValueError as e:
            raise UsageError(f"checkpoint {ck['path']} does not fit the model: {e}") from None
        say(f"resuming {ck['path']} at step {trainer.state.step}")
    else:
        say(f"training GPT ({task.model.num_parameters():,} parameters, {cfg.n_layer} layers, "
            f"{cfg.n_head} heads, {cfg.n_embd} dims, block {cfg.block_size}, batch {batch}) with "
            f"{opt_name} lr {lr} for {steps} steps -> {out}"
            + (f", data-parallel over {trainer.world.size} MPI ranks" if trainer.world.size > 1 else ""))
    rc = trainer.run_for_cli(steps)
    if rc is not None:
        return rc
    if not trainer.world.root:
        return 0
    print(f"checkpoint: {trainer.ckpt_path}")
    if a.sample_tokens > 0:
        vocab = task.data.vocab
        ids = generate(task.model, vocab.encode(default_prompt(vocab)), a.sample_tokens,
                       temperature=0.8, top_k=None, seed=seed)
        print("--- sample ---")
        print(vocab.decode(ids[1:]))
    return 0


# --- symgrad sample ------------------------------------------------------------------------
def sample_main(argv) -> int:
    p = Parser(prog="symgrad sample", description="Sample text from a trained character model.")
    p.add_argument("checkpoint")
    p.add_argument("--tokens", type=_positive_int, default=500)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=_positive_int)
    p.add_argument("--prompt", help="text to continue (default: a newline, or the first "
                   "character of a vocabulary without one)")
    p.add_argument("--seed", type=int, default=0)
    try:
        a = p.parse_args(list(argv))
        if not (math.isfinite(a.temperature) and a.temperature > 0):
            raise UsageError(f"--temperature must be a finite number > 0, got {a.temperature}")
        from symgrad.models import checkpoint
        from symgrad.models.data import DataError
        try:
            ck = checkpoint.load(a.checkpoint)
        except checkpoint.CheckpointError as e:
            raise UsageError(str(e)) from None
        kind = ck["meta"]["kind"]
        try:
            if kind == "gpt":
                from symgrad.models.tasks import GPTTask
                model, vocab = GPTTask.model_from_config(ck["meta"]["config"])
                logits_fn = None
            elif kind in ("rnn", "lstm"):
                from symgrad.models.recurrent import char_rnn_sampler
                model, vocab, logits_fn = char_rnn_sampler(ck["meta"]["config"])
            else:
                raise UsageError(f"checkpoint {ck['path']} holds a '{kind}' model, which does not sample text")
        except (KeyError, TypeError) as e:
            raise UsageError(f"corrupt checkpoint {ck['path']}: its config is incomplete "
                             f"({type(e).__name__}: {e})") from None
        try:
            model.load_state_dict(ck["params"])
        except ValueError as e:
            raise UsageError(f"corrupt checkpoint {ck['path']}: {e}") from None
        from symgrad.models.sample import SampleError, default_prompt, generate
        try:
            prompt = vocab.encode(default_prompt(vocab) if a.prompt is None else a.prompt)
        except DataError as e:
            raise UsageError(f"--prompt: {e}") from None
        if len(prompt) == 0:
            raise UsageError("--prompt is empty")
        try:
            ids = generate(model, prompt, a.tokens, a.temperature, a.top_k, a.seed, logits_fn=logits_fn)
        except SampleError as e:
            raise UsageError(f"checkpoint {ck['path']}: {e}") from None
    except UsageError as e:
        return _fail("symgrad sample", e)
    sys.stdout.write(vocab.decode(ids) + "\n")
    return 0


# --- symgrad bench train -------------------------------------------------------------------
def _bench_parser():
    import os

    cores = os.cpu_count() or 1
    p = Parser(prog="symgrad bench train",
               description="Training-step speed of symgrad's reference GPT against PyTorch, each side in a "
                           "process of its own, interleaved in rounds in one run: each ratio with its per-round "
                           "spread, the step's GEMM floor, MFU against an sgemm peak measured in the same run, "
                           "and peak memory.")
    p.add_argument("--peer", default="eager", metavar="eager|fused|compile|all",
                   help="the PyTorch side(s): eager (SDPA, AdamW foreach), fused (AdamW fused), compile "
                        "(torch.compile, warmed up first), all; or a comma-separated list (default: eager)")
    p.add_argument("--load", type=_nonnegative_int, nargs="?", const=cores, default=0, metavar="N",
                   help=f"run N competing busy processes for the duration (no N: one per core, {cores} here)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--rounds", type=_positive_int, default=5)
    p.add_argument("--steps", type=_positive_int, default=10, help="steps per round and side")
    p.add_argument("--threads", type=_positive_int, default=2)
    p.add_argument("--profile", action="store_true", help="also print where symgrad's step time goes")
    return p


def bench_main(argv) -> int:
    p = _bench_parser()
    try:
        a = p.parse_args(list(argv))
    except UsageError as e:
        return _fail("symgrad bench", e)
    from symgrad.models import bench
    from symgrad.models.sides import SideError
    try:
        a.peer = bench.parse_peers(a.peer)
    except ValueError as e:
        return _fail("symgrad bench", f"argument --peer: {e}")
    try:
        return bench.main(a)
    except SideError as e:  # its first line names the side and what failed (torch not installed)
        return _fail("symgrad bench", str(e).splitlines()[0])


__all__ = ["train_main", "sample_main", "bench_main"]
