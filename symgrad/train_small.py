"""`symgrad train mlp|rnn|lstm|word2vec|cnn`: the smaller models' runs (called by
symgrad/train_cmd.py, which parses the arguments and reports a UsageError in one line).

    mlp        the MLP on two spirals (models/mlp.py); no checkpoint
    word2vec   skip-gram with negative sampling on the text (models/word2vec.py); no checkpoint
    rnn, lstm  a character model on the text by truncated BPTT (models/recurrent.py), through
               models.trainer: checkpoints under --out, --resume continues one
    cnn        the CNN on the 8x8 digits (models/cnn.py), against PyTorch eager when installed;
               --steps counts epochs; no checkpoint
"""

from __future__ import annotations

import numpy as np

from symgrad.usage import UsageError


def train(a) -> int:
    from symgrad.models.data import DataError, read_text
    if a.model == "cnn":
        return _cnn(a)
    if a.resume and a.model not in ("rnn", "lstm"):
        raise UsageError(f"--resume is supported for gpt, rnn and lstm, not {a.model}")
    if a.model == "mlp":
        return _mlp(a)
    try:
        text = read_text(a.text)
    except DataError as e:
        raise UsageError(str(e)) from None
    if a.model == "word2vec":
        return _word2vec(a, text)
    return _char_rnn(a, text)


def _mlp(a) -> int:
    from symgrad.models.mlp import train_mlp
    model, acc, losses = train_mlp(steps=a.steps or 600, lr=a.lr if a.lr is not None else 0.01,
                                   optimizer=a.optimizer or "adam", batch_size=a.batch_size, seed=a.seed,
                                   hidden=a.hidden or 64)
    print(f"MLP on two spirals: loss {losses[0]:.3f} -> {losses[-1]:.3f}, held-out accuracy {acc:.3f}")
    return 0


def _word2vec(a, text) -> int:
    from symgrad.models.data import DataError
    from symgrad.models.word2vec import train_word2vec
    try:
        _, nb, losses = train_word2vec(text, steps=a.steps or 3000, lr=a.lr if a.lr is not None else 0.01,
                                       optimizer=a.optimizer or "adam", batch_size=a.batch_size or 512,
                                       seed=a.seed)
    except DataError as e:
        raise UsageError(str(e)) from None
    print(f"Word2Vec skip-gram, negative sampling: loss {np.mean(losses[:50]):.3f} -> "
          f"{np.mean(losses[-50:]):.3f}; nearest neighbours (cosine):")
    for w, ns in nb.items():
        print(f"  {w:8s} -> {', '.join(ns)}")
    return 0


def _cnn(a) -> int:
    from symgrad.models.cnn import train_cnn
    if a.resume:
        raise UsageError("--resume is supported for gpt, rnn and lstm, not cnn (its run is under a minute)")
    r = train_cnn(epochs=a.steps or 20, lr=a.lr if a.lr is not None else 3e-3,
                  batch_size=a.batch_size or 32, seed=a.seed)
    ours = np.median(r["epoch_s"][1:] or r["epoch_s"])
    print(f"CNN on the 8x8 digits: held-out accuracy {r['accuracy']:.4f}; "
          f"{ours * 1e3:.0f} ms an epoch ({r['batches_per_epoch']} steps)", end="")
    if r["torch_epoch_s"]:
        theirs = np.median(r["torch_epoch_s"][1:] or r["torch_epoch_s"])
        print(f", PyTorch eager {theirs * 1e3:.0f} ms: {theirs / ours:.2f}x")
    else:
        print(" (PyTorch not installed: no comparison)")
    return 0


def _char_rnn(a, text) -> int:
    from symgrad.models.data import DataError
    from symgrad.models.optim import make_optimizer
    from symgrad.models.recurrent import CharRNNTask
    from symgrad.models.sample import default_prompt, generate
    from symgrad.models.schedules import make_schedule
    from symgrad.models.trainer import Trainer
    from symgrad.train_cmd import load_resume, out_dir

    ck = None
    if a.resume:
        ck = load_resume(a, a.model)
        conf = ck["meta"]["config"]
        hidden, batch, seed, bptt = conf["model"]["hidden"], conf["batch_size"], conf["seed"], conf["bptt"]
        if (a.hidden and a.hidden != hidden) or (a.batch_size and a.batch_size != batch):
            raise UsageError(f"checkpoint {ck['path']} is from another config (hidden {hidden}, batch {batch})")
        out = ck["path"].parent
    else:
        hidden, batch, seed, bptt = a.hidden or 128, a.batch_size or 32, a.seed, a.block_size or 32
        out = out_dir(a)
    try:
        task = CharRNNTask(a.model, text, hidden=hidden, batch_size=batch, bptt=bptt, seed=seed)
    except DataError as e:
        raise UsageError(str(e)) from None
    steps = a.steps or 1000
    lr = a.lr if a.lr is not None else 3e-3
    try:
        opt = make_optimizer(a.optimizer or "adam", task.model.parameters(),
                             schedule=make_schedule(a.schedule, lr, steps),
                             max_grad_norm=a.max_grad_norm if a.max_grad_norm is not None else 5.0)
    except ValueError as e:
        raise UsageError(str(e)) from None
    trainer = Trainer(task, task.model, opt, out, eval_interval=a.eval_interval or max(1, steps // 5),
                      progress=not a.no_progress)
    if ck is not None:
        trainer.restore(ck)
    print(f"training char {a.model.upper()} (hidden {hidden}, {task.model.num_parameters():,} parameters, "
          f"truncated BPTT over {bptt} steps, batch {batch}) for {steps} steps -> {out}")
    rc = trainer.run_for_cli(steps)
    if rc is not None:
        return rc
    if a.sample_tokens > 0:
        model, vocab = task.model, task.data.vocab

        def fn(ids):
            return model(np.asarray(ids, dtype=np.int64)[None, -256:])[0][0, -1]
        ids = generate(model, vocab.encode(default_prompt(vocab)), min(a.sample_tokens, 200), 0.8, None, seed,
                       logits_fn=fn)
        print("--- sample ---")
        print(vocab.decode(ids[1:]))
    return 0


__all__ = ["train"]
