"""How much do the 8 dihedral views add? Train the v2 members (deterministic) and score OOF with 1/2/4/8 views."""
import json, numpy as np, tensorflow as tf
from sklearn.metrics import roc_auc_score
from training.data import load_images
from training.splits import cv_splits, subject_table
from training.train import TrainConfig, train_model
from training.evaluate import choose_threshold, classification_metrics
cfg = TrainConfig.from_dict(json.load(open('/work/main/runs/improved-v2b/config.json'))['config'])
c = load_images('/work/shared/data/cnmc', 64, 0.75, '/work/main/cache')
splits = cv_splits(subject_table(c.subjects, c.labels))
def views(x, n):
    out = []
    for flip in (False, True):
        for k in range(4):
            t = tf.image.rot90(x, k=k); out.append(tf.image.flip_left_right(t) if flip else t)
    order = {1: [0], 2: [0, 6], 4: [0, 1, 2, 3], 8: list(range(8))}[n]
    return [out[i] for i in order]
def score(model, imgs, n):
    x = tf.convert_to_tensor(imgs.pixels, tf.float32)
    ps = [np.asarray(model.predict(v, batch_size=256, verbose=0)).reshape(-1) for v in views(x, n)]
    return np.mean(ps, axis=0)
res = {n: {'oof': np.zeros(len(c.labels)), 'val': {}} for n in (1, 2, 4, 8)}
for sp in splits:
    m = sp.masks(c.subjects)
    tr, va, te = (c.subset(m[r]) for r in ('train', 'validation', 'test'))
    model = train_model(cfg, tr, va, label=sp.name).model
    for n in res:
        res[n]['oof'][m['test']] = score(model, te, n)
        res[n]['val'][sp.name] = (va.labels, score(model, va, n))
for n, r in res.items():
    out = []
    for sp in splits:
        mt = sp.masks(c.subjects)['test']
        yv, pv = r['val'][sp.name]; t = choose_threshold(yv, pv)
        mm = classification_metrics(c.labels[mt], r['oof'][mt], t)
        out.append((mm['balanced_accuracy'], mm['weighted_f1'], mm['roc_auc']))
    a = np.array(out)
    print(f'views {n}:', ' | '.join(f'{x[0]:.3f}/{x[1]:.3f}/{x[2]:.3f}' for x in a), f'MEAN {a.mean(0).round(3)} pooled AUC {roc_auc_score(c.labels, r["oof"]):.3f}', flush=True)
