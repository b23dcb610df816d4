"""Train single folds in-process and print validation / test AUC after every epoch (a quick probe).

    python bench/probe_fold.py STORE FOLDS EPOCHS '{"model": "sam-mil", "mask": "none"}'

FOLDS: comma-separated fold indices of the 3-fold split that ``samtrain fit --folds 3`` makes with the same
seed (default 2021). The JSON holds TrainConfig fields. No selection, no checkpoint: it shows the trajectory
(``epoch:valAUC/testAUC``). The initialisation and data order differ from ``samtrain fit`` (seed + fold),
so a fold can be probed from another starting point.
"""
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from clam2sam.store.writer import open_store  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.data import BagDataset, load_cohort  # noqa: E402
from trainer.feature_stats import training_feature_stats  # noqa: E402
from trainer.loop import evaluate, train_one_epoch  # noqa: E402
from trainer.metrics import safe_auc  # noqa: E402
from trainer.models import build_model  # noqa: E402
from trainer.splits import make_cv_splits  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    store, folds, epochs = argv[0], [int(f) for f in argv[1].split(",")], int(argv[2])
    kw = json.loads(argv[3]) if len(argv) > 3 else {}
    torch.set_num_threads(1)
    cfg = TrainConfig(store=store, out="-", **kw).resolve()
    coh = load_cohort(store)
    splits = make_cv_splits(coh.y, coh.case_ids, folds=3, repeats=1, val_frac=cfg.val_frac, seed=cfg.seed)
    D = open_store(store).feature_dim

    def bags(idx):
        d = BagDataset(store, [coh.slide_ids[i] for i in idx], coh.y[idx], cache=True)
        return [d[i] for i in range(len(d))]

    for fi in folds:
        sp = splits[fi]
        torch.manual_seed(cfg.seed + fi)
        m = build_model(cfg.model, D, len(coh.classes), cfg)
        if cfg.attn_init == "uniform":
            m.init_uniform_attention()
        if cfg.standardize:
            m.set_feature_stats(*training_feature_stats(store, [coh.slide_ids[i] for i in sp.train]))
        opt = torch.optim.Adam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        tr, va, te = bags(sp.train), bags(sp.val), bags(sp.test)
        line, t0 = [], time.time()
        for ep in range(epochs):
            train_one_epoch(m, [tr[i] for i in torch.randperm(len(tr)).tolist()], opt, "cpu")
            sched.step()
            pv, pt = evaluate(m, va, "cpu"), evaluate(m, te, "cpu")
            line.append(f"{ep}:{safe_auc(pv.y, pv.prob):.2f}/{safe_auc(pt.y, pt.prob):.2f}")
        print(json.dumps(kw), "fold", fi, " ".join(line), f"{time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
