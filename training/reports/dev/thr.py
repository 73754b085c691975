"""Compare threshold rules: per-fold validation (as CV reports) vs chosen on the other folds' OOF."""
import sys, json
import numpy as np
from training.data import load_images
from training.splits import cv_splits, subject_table
from training.evaluate import choose_threshold, classification_metrics
z0 = np.load('/work/main/cache/cnmc-e0c26cf8b28a685ade02.npz'); y = z0['labels']; s = z0['subjects']
splits = cv_splits(subject_table(s, y))
masks = [sp.masks(s)['test'] for sp in splits]
def load(tag):
    if tag.startswith('run:'):
        p = np.load(f'/work/main/runs/{tag[4:]}/cv_predictions.npz'); order = np.concatenate([np.flatnonzero(m) for m in masks]); full = np.zeros(len(y)); full[order] = p['p']; return full
    if '+' in tag:
        return np.mean([load(t) for t in tag.split('+')], axis=0)
    return np.load(f'/work/main/.tmp-notes/exp/{tag}.npz')['oof']
for tag in sys.argv[1:]:
    p = load(tag); out = []
    for k, m in enumerate(masks):
        other = ~m
        t = choose_threshold(y[other], p[other])
        r = classification_metrics(y[m], p[m], t)
        out.append((r['balanced_accuracy'], r['weighted_f1'], r['roc_auc'], t))
    a = np.array(out)
    print(f'{tag:30s} other-fold-OOF thr:', ' | '.join(f'{r[0]:.3f}/{r[1]:.3f}/{r[2]:.3f}@{r[3]:.2f}' for r in a), f' MEAN {a[:,0].mean():.3f}/{a[:,1].mean():.3f}/{a[:,2].mean():.3f}')
