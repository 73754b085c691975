"""Dev-only: full 3-fold CV of a config; saves OOF predictions in cache order."""
import sys, json, time
import numpy as np
from sklearn.metrics import roc_auc_score
from training.data import load_images
from training.splits import cv_splits, subject_table
from training.pipeline import run_split
from training.train import TrainConfig
import dataclasses
from training.train import paper_config
base = json.load(open('/work/main/runs/improved-h2/config.json'))['config']
tag = sys.argv[1]; over = json.loads(sys.argv[2])
cfg = dataclasses.replace(paper_config(), **{k: v for k, v in over.items() if k != 'arch'}) if over.get('arch') == 'paper' else TrainConfig.from_dict({**base, **over})
c = load_images('/work/shared/data/cnmc', cfg.input_size, cfg.crop_fraction, '/work/main/cache')
splits = cv_splits(subject_table(c.subjects, c.labels))
oof = np.zeros(len(c.labels), np.float32); res = []; t0 = time.time()
vals = {}
for sp in splits:
    m = sp.masks(c.subjects)
    o = run_split(cfg, c, sp)
    oof[m['test']] = o.p_test
    vals[sp.name] = (o.y_val, o.p_val)
    res.append({k: o.test[k] for k in ('balanced_accuracy', 'weighted_f1', 'roc_auc', 'sensitivity', 'specificity')} | {'thr': o.threshold, 'epoch': o.result.selected_epoch})
np.savez(f'/work/main/.tmp-notes/exp/{tag}.npz', oof=oof, y=c.labels, **{f'pval_{k}': v[1] for k, v in vals.items()}, **{f'yval_{k}': v[0] for k, v in vals.items()})
mean = {k: float(np.mean([r[k] for r in res])) for k in ('balanced_accuracy', 'weighted_f1', 'roc_auc')}
line = {'tag': tag, 'over': over, 'mean': mean, 'pooled_auc': float(roc_auc_score(c.labels, oof)), 'folds': res, 'seconds': time.time() - t0}
open('/work/main/.tmp-notes/exp/results.jsonl', 'a').write(json.dumps(line) + '\n')
print('RESULT', json.dumps(line), flush=True)
