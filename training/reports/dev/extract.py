"""Scratch: full-resolution hand-crafted features for each cached image (same order as cache)."""
import json, sys, time
import numpy as np
from PIL import Image
from skimage import measure, morphology, feature, color, filters
root = '/work/shared/data/cnmc'
z = np.load('/work/main/cache/' + sys.argv[1], allow_pickle=False)
meta = json.loads(str(z['meta'])); paths = meta['paths']
feats = []; names = None
t0 = time.time()
for i, p in enumerate(paths):
    rgb = np.asarray(Image.open(f'{root}/{p}').convert('RGB'))
    f = {}
    mask = rgb.max(-1) > 10
    lab = measure.label(mask)
    if lab.max() == 0:
        feats.append(None); continue
    rp = max(measure.regionprops(lab), key=lambda r: r.area)
    cell = lab == rp.label
    f['area'] = rp.area
    f['perim'] = rp.perimeter
    f['circ'] = 4*np.pi*rp.area/max(rp.perimeter,1)**2
    f['solidity'] = rp.solidity
    f['ecc'] = rp.eccentricity
    f['major'] = rp.major_axis_length; f['minor'] = rp.minor_axis_length
    f['extent'] = rp.extent
    px = rgb[cell].astype(np.float32)
    for c, n in enumerate('rgb'):
        f[f'mean_{n}'] = px[:, c].mean(); f[f'std_{n}'] = px[:, c].std()
        for q in (10, 50, 90):
            f[f'q{q}_{n}'] = np.percentile(px[:, c], q)
    gray = rgb.astype(np.float32).mean(-1)
    g = gray[cell]
    # nucleus: darker part of the cell (Otsu within cell)
    t = filters.threshold_otsu(g)
    nuc = cell & (gray < t)
    f['nuc_frac'] = nuc.sum() / cell.sum()
    f['nuc_area'] = nuc.sum()
    nl = measure.label(nuc)
    if nl.max():
        nr = max(measure.regionprops(nl), key=lambda r: r.area)
        f['nuc_solidity'] = nr.solidity; f['nuc_ecc'] = nr.eccentricity
        f['nuc_circ'] = 4*np.pi*nr.area/max(nr.perimeter,1)**2
        f['n_nuc_parts'] = nl.max()
    else:
        f['nuc_solidity']=f['nuc_ecc']=f['nuc_circ']=0; f['n_nuc_parts']=0
    f['otsu_t'] = t
    # texture on gray inside eroded cell
    inner = morphology.binary_erosion(cell, morphology.disk(5))
    gx = np.gradient(gray)
    gm = np.hypot(*gx)
    f['grad_mean'] = gm[inner].mean() if inner.any() else 0
    f['grad_rel'] = f['grad_mean'] / max(g.mean(), 1)
    lap = filters.laplace(gray / 255.0)
    f['lap_var'] = lap[inner].var() if inner.any() else 0
    lbp = feature.local_binary_pattern(gray.astype(np.uint8), 8, 1, 'uniform')
    h = np.bincount(lbp[inner].astype(int), minlength=10)[:10] / max(inner.sum(), 1)
    for k in range(10): f[f'lbp{k}'] = h[k]
    # nucleus texture
    ninner = inner & nuc
    f['nuc_grad'] = gm[ninner].mean() if ninner.any() else 0
    f['nuc_std'] = gray[ninner].std() if ninner.any() else 0
    if names is None: names = list(f)
    feats.append([f[n] for n in names])
    if i % 500 == 0: print(i, time.time()-t0, flush=True)
X = np.array(feats, dtype=np.float64)
np.savez('/work/main/.tmp-notes/feat/features.npz', X=X, names=np.array(names), y=z['labels'], s=z['subjects'])
print('done', X.shape, time.time()-t0)
