import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.linear_model import LogisticRegression
from training.splits import cv_splits, subject_table
z = np.load('/work/main/.tmp-notes/feat/features.npz'); X, names, y, s = z['X'], list(z['names']), z['y'], z['s']
splits = cv_splits(subject_table(s, y))
preds = {}
for run in ('improved-h2', 'improved-h2-seed1', 'paper-final', 'improved-h1'):
    try:
        p = np.load(f'/work/main/runs/{run}/cv_predictions.npz'); order = np.concatenate([np.flatnonzero(sp.masks(s)['test']) for sp in splits]); full = np.zeros(len(y)); full[order] = p['p']; assert (p['y'] == y[order]).all(); preds[run] = full
    except Exception as e: print(run, e)
oof = np.zeros(len(y))
for sp in splits:
    m = sp.masks(s); tr = m['train'] | m['validation']
    a = np.log(X[:, names.index('area')])[:, None]
    clf = LogisticRegression(class_weight='balanced').fit(a[m['train']], y[m['train']])
    oof[m['test']] = clf.predict_proba(a[m['test']])[:, 1]
preds['area'] = oof
lg = lambda p: np.log(np.clip(p,1e-6,1-1e-6)/(1-np.clip(p,1e-6,1-1e-6)))
def show(name, p):
    aucs = [roc_auc_score(y[sp.masks(s)['test']], p[sp.masks(s)['test']]) for sp in splits]
    print(f'{name:40s}', ' '.join(f'{a:.3f}' for a in aucs), f'mean {np.mean(aucs):.3f} pooled {roc_auc_score(y,p):.3f}')
for k, v in preds.items(): show(k, v)
import itertools
for r in (2, 3):
    for c in itertools.combinations(preds, r):
        show('+'.join(c), sum(lg(preds[k]) for k in c))
# per subject mean score
for k in ('improved-h2', 'paper-final', 'area'):
    print(k, {sub: round(float(preds[k][s==sub].mean()),2) for sub in sorted(set(s))})
from sklearn.metrics import roc_curve
print('oracle bal acc per fold (best threshold on test itself) vs pooled-OOF threshold')
def balacc(yt, pt, t): pr = pt >= t; return (pr[yt==1].mean() + (~pr[yt==0]).mean())/2
for k in ('improved-h2','paper-final','area'):
    p = preds[k]; out=[]
    fpr, tpr, th = roc_curve(y, p); tpool = th[np.argmax(tpr-fpr)]
    for sp in splits:
        m = sp.masks(s)['test']; f, t_, th_ = roc_curve(y[m], p[m]); out.append((np.max((t_+1-f)/2), balacc(y[m], p[m], tpool)))
    print(k, 'oracle', ' '.join(f'{o[0]:.3f}' for o in out), 'pooled-thr', ' '.join(f'{o[1]:.3f}' for o in out), f'tpool {tpool:.2f}')
