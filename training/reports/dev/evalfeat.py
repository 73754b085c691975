import sys, json
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.pipeline import make_pipeline
from sklearn.ensemble import HistGradientBoostingClassifier
from training.splits import cv_splits, subject_table
from training.evaluate import choose_threshold, classification_metrics
z = np.load('/work/main/.tmp-notes/feat/features.npz')
X, names, y, s = z['X'], list(z['names']), z['y'], z['s']
splits = cv_splits(subject_table(s, y))
def run(cols, model='lr', C=1.0, verbose=False, log=()):
    idx = [names.index(c) for c in cols]
    Xs = X[:, idx].copy()
    for c in log:
        if c in cols: Xs[:, cols.index(c)] = np.log(Xs[:, cols.index(c)] + 1)
    res = []; oof = np.zeros(len(y))
    for sp in splits:
        m = sp.masks(s)
        if model == 'lr':
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight='balanced', max_iter=2000))
        else:
            clf = HistGradientBoostingClassifier(max_depth=3, learning_rate=0.05, max_iter=200, class_weight='balanced')
        clf.fit(Xs[m['train']], y[m['train']])
        pv = clf.predict_proba(Xs[m['validation']])[:, 1]
        pt = clf.predict_proba(Xs[m['test']])[:, 1]
        oof[m['test']] = pt
        t = choose_threshold(y[m['validation']], pv)
        r = classification_metrics(y[m['test']], pt, t)
        res.append((r['balanced_accuracy'], r['weighted_f1'], r['roc_auc'], t))
    a = np.array(res)
    return a
groups = {
 'area': ['area'],
 'shape': ['area','perim','circ','solidity','ecc','major','minor','extent'],
 'nuc': ['nuc_frac','nuc_area','nuc_solidity','nuc_ecc','nuc_circ','n_nuc_parts'],
 'colour': [n for n in names if n[:4] in ('mean','std_') or n[:1]=='q'],
 'tex': ['grad_mean','grad_rel','lap_var','nuc_grad','nuc_std'] + [f'lbp{k}' for k in range(10)],
}
combos = [['area'], ['shape'], ['area','nuc'], ['shape','nuc'], ['shape','tex'], ['area','tex'], ['shape','nuc','tex'], ['shape','nuc','tex','colour'], ['colour'], ['tex'], ['nuc']]
for model in ('lr', 'gb'):
    for combo in combos:
        cols = sum((groups[g] for g in combo), [])
        a = run(cols, model)
        print(f"{model} {'+'.join(combo):28s} folds " + ' | '.join(f'{r[0]:.3f}/{r[1]:.3f}/{r[2]:.3f}' for r in a) + f"  MEAN {a[:,0].mean():.3f}/{a[:,1].mean():.3f}/{a[:,2].mean():.3f}")
# single features AUC per fold
from sklearn.metrics import roc_auc_score
print('single-feature AUC on each fold test (sign-free)')
for n in names:
    aucs = []
    for sp in splits:
        m = sp.masks(s)['test']
        a = roc_auc_score(y[m], X[m, names.index(n)])
        aucs.append(a)
    print(f'{n:14s}', ' '.join(f'{a:.3f}' for a in aucs))
