import sys, numpy as np
from training.splits import cv_splits, subject_table
from training.evaluate import choose_threshold, classification_metrics
z0 = np.load('/work/main/cache/cnmc-e0c26cf8b28a685ade02.npz'); y = z0['labels']; s = z0['subjects']
splits = cv_splits(subject_table(s, y))
tags = sys.argv[1:]
Z = [np.load(f'/work/main/.tmp-notes/exp/{t}.npz') for t in tags]
oof = np.mean([z['oof'] for z in Z], axis=0); out = []
for sp in splits:
    m = sp.masks(s)['test']
    pv = np.mean([z[f'pval_{sp.name}'] for z in Z], axis=0); yv = Z[0][f'yval_{sp.name}']
    t = choose_threshold(yv, pv); r = classification_metrics(y[m], oof[m], t)
    out.append((r['balanced_accuracy'], r['weighted_f1'], r['roc_auc'], t))
a = np.array(out)
from sklearn.metrics import roc_auc_score
print('+'.join(tags), ' | '.join(f'{r[0]:.3f}/{r[1]:.3f}/{r[2]:.3f}@{r[3]:.2f}' for r in a), f'MEAN {a[:,0].mean():.3f}±{a[:,0].std():.3f} / {a[:,1].mean():.3f}±{a[:,1].std():.3f} / {a[:,2].mean():.3f}±{a[:,2].std():.3f}', 'pooled', round(roc_auc_score(y, oof),3))
