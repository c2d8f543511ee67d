"""Two arms of the S-Net ablation (baseline, all three) at any checkout, to tell what moved its figures.

Used to separate the training engine's effect (``sscild.engine.fit``, commit 9ca0f36) from that of the training
data: run it with the ``src`` and ``bench`` of a checkout first on the path, e.g. ::

    git worktree add ../wt_old 9ca0f36^ && cd ../wt_old
    OMP_NUM_THREADS=1 PYTHONPATH=src:bench python ../main/bench/snet_arms.py

Data are built (and cached under that checkout's ``bench/work``) by that checkout's ``bench_snet``, exactly as its
ablation builds them; the arms train as its ablation does (1500 steps of batch 16, lr 5e-4, seed ``SEED``, 0 by
default) and print MAE and weighted kappa on its held-out test set. It writes no results file: the figures go into
the note of the change they explain.
"""
from __future__ import annotations

import dataclasses
import os
import time

import bench_snet as b
import torch


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    _, cfg, _ = b.load_snet()
    source = b.pattern_source_from_spec({"source": "real_gg", "real_gg": str(b.COVID)}, b.REPO)
    data_cfg = dataclasses.replace(cfg, texture=True)
    test = b.SliceSet.concat(list(b.test_sets(data_cfg, source)))
    train_ph, syn = b.train_sets(data_cfg, source)
    acfg = dataclasses.replace(cfg, calibration=None)
    seed = int(os.environ.get("SEED", 0))
    for name, data, balanced, pre in [("baseline", train_ph, False, False),
                                      ("all three", b.SliceSet.concat([train_ph, syn]), True, True)]:
        t0 = time.time()
        init = b.pretrain(data, cfg=acfg, steps=500, batch_size=16)[0] if pre else None
        m, _ = b.train_snet(data, cfg=acfg, steps=b.ABLATION_STEPS, batch_size=16, lr=5e-4, balanced=balanced,
                            augment=True, seed=seed, model=init)
        t = b.evaluation_table(b.predict_prepared(m, test, acfg), test.scores)
        print(f"{b.__file__} seed {seed} | {name} | MAE " + " / ".join(f"{t[p]['MAE']:.2f}" for p in b.PATTERNS) +
              " | kappa " + " / ".join(f"{t[p]['kappa']:.3f}" for p in b.PATTERNS) + f" | {time.time() - t0:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
