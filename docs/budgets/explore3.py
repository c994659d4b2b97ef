"""Budget exploration for the Fashion-MNIST demo (run on a GPU; results as JSON lines)."""
import json, math, os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "snap"))
import torch
import torch.nn.functional as F
from sweeper import data as D, models as M
from sweeper.attacks import AttackConfig, pgd
from sweeper.training import TrainConfig, train
from sweeper.synthesis import invert, relabel, start_points
from sweeper import aa

DEV = "cuda" if torch.cuda.is_available() else "cpu"
OUT = os.environ.get("OUT", "/tmp")
QUICK = os.environ.get("QUICK") == "1"
LOG = open(os.path.join(OUT, "explore3.jsonl"), "a")
T0 = time.time()
def emit(**kw):
    kw["t"] = round(time.time() - T0, 1)
    print(json.dumps(kw), flush=True); LOG.write(json.dumps(kw) + "\n"); LOG.flush()

root = os.path.join(os.path.dirname(__file__), "fmnist")
tr = D.load("fashion_mnist", "train", root=root); te = D.load("fashion_mnist", "test", root=root)
def subset(ds, n, seed=0):
    n = min(n, 200) if QUICK else n
    idx = D.subset_indices(len(ds.y), n, seed); return ds.x[idx].to(DEV), ds.y[idx].to(DEV), idx
N_TEST = 300 if QUICK else 1000
xte, yte, _ = subset(te, N_TEST, 0)

def new(arch="small_cnn", seed=0):
    torch.manual_seed(seed)
    return M.build(arch, num_classes=10, in_shape=(1, 28, 28), mean=tr.mean, std=tr.std).to(DEV)

def fit(x, y, epochs, seed=0, arch="small_cnn", adv=None, lr=0.05):
    epochs = 1 if QUICK else epochs
    m = new(arch, seed)
    train(m, x, y, TrainConfig(epochs=epochs, batch_size=128, optimizer="sgd", lr=lr, schedule="cosine",
                               adversarial=adv, seed=seed))
    return m.eval()

def acc(m, x, y):
    with torch.no_grad():
        return float((m(x).argmax(1) == y).float().mean())

def robust_flags(m, x, y, attacks):
    """per-attack robust flags (clean-correct and still correct)"""
    with torch.no_grad():
        ok = m(x).argmax(1) == y
    out = {}
    for name, fn in attacks.items():
        xa = fn(m, x, y)
        with torch.no_grad():
            out[name] = ok & (m(xa).argmax(1) == y)
    return ok, out

def attacks_for(eps, strong):
    g = torch.Generator(device=DEV).manual_seed(0)
    a = {f"pgd10_{eps}": lambda m, x, y: pgd(m, x, y, AttackConfig(norm="l2", eps=eps, steps=10), generator=g)}
    if strong:
        a[f"pgd50r5_{eps}"] = lambda m, x, y: pgd(m, x, y, AttackConfig(norm="l2", eps=eps, steps=50, random_start=True, restarts=5), generator=g)
        a[f"apgdce_{eps}"] = lambda m, x, y: aa.run_attack(m, x, y, method="apgd-ce", norm="l2", eps=eps, steps=50)
        a[f"apgdt_{eps}"] = lambda m, x, y: aa.run_attack(m, x, y, method="apgd-t", norm="l2", eps=eps, steps=50)
    return a

def _unused_eval_model(m, strong=True):
    res = {"clean": acc(m, xte, yte)}
    for eps in (0.5, 1.0):
        ok, fl = robust_flags(m, xte, yte, attacks_for(eps, strong and eps == 1.0))
        worst = ok.clone()
        for k, f in fl.items():
            res[k] = float(f.float().mean()); worst &= f
        res[f"worst_{eps}"] = float(worst.float().mean())
    return res


def attacks_for(eps, strong):
    g = torch.Generator(device=DEV).manual_seed(0)
    a = {f"pgd20_{eps}": lambda m, x, y: pgd(m, x, y, AttackConfig(norm="l2", eps=eps, steps=20), generator=g)}
    if strong:
        a[f"apgdce_{eps}"] = lambda m, x, y: aa.run_attack(m, x, y, method="apgd-ce", norm="l2", eps=eps, steps=25)
        a[f"apgdt3_{eps}"] = lambda m, x, y: aa.run_attack(m, x, y, method="apgd-t", norm="l2", eps=eps, steps=25, n_targets=3)
        if FULL:
            a[f"aa_{eps}"] = lambda m, x, y: aa.run_attack(m, x, y, method="autoattack", norm="l2", eps=eps, steps=100)
    return a
FULL = False
def eval_model(m, strong=True):
    res = {"clean": acc(m, xte, yte)}
    for eps in (0.5, 1.0):
        ok, fl = robust_flags(m, xte, yte, attacks_for(eps, strong and eps == 1.0))
        worst = ok.clone()
        for k, f in fl.items():
            res[k] = float(f.float().mean()); worst &= f
        res[f"worst_{eps}"] = float(worst.float().mean())
    return res

N = 1000
def relabel_exp(src_name, src, eps, policy, n=N, seeds=(0, 1), steps=100):
    x, y, _ = subset(tr, n, 0)
    g = torch.Generator(device=DEV).manual_seed(7)
    out = relabel(src, x, y, policy=policy, num_classes=10, attack=AttackConfig(norm="l2", eps=eps, steps=steps, step_size=2.5 * eps / steps), generator=g)
    with torch.no_grad():
        rob_orig = float((robust(out["x"]).argmax(1) == y).float().mean())
        tb = float((std_b(out["x"]).argmax(1) == out["y"]).float().mean())
    accs, shifted = [], []
    for s in seeds:
        m = fit(out["x"], out["y"], 2 if QUICK else 30, seed=s)
        accs.append(acc(m, xte, yte)); shifted.append(acc(m, xte, (yte + 1) % 10))
    emit(stage="relabel", src=src_name, eps=eps, policy=policy, n=n, hit=float(out["hit"].float().mean()),
         robust_reads_orig=rob_orig, transfer_std_b=tb, true_acc=accs, shifted_acc=shifted)

t = time.time()
srcs = {}
for name, n, ep in (("std", 10000, 3), ("std20", 20000, 3), ("std60_2", 60000, 2)):
    x, y, _ = subset(tr, n, 0); srcs[name] = fit(x, y, ep)
for name, n, ep, st in (("robust", 5000, 4, 5), ("robust10_5", 10000, 5, 5), ("robust10_4s3", 10000, 4, 3), ("robust20", 20000, 6, 7)):
    x, y, _ = subset(tr, n, 0); srcs[name] = fit(x, y, ep, adv=AttackConfig(norm="l2", eps=1.0, steps=st, step_size=2.5/st))
x_b, y_b, _ = subset(tr, 10000, 0); std_b = fit(x_b, y_b, 3, seed=1); robust = srcs["robust"]
emit(stage="sources", wall=round(time.time() - t, 1), **{k: acc(m, xte, yte) for k, m in srcs.items()})
def start_of(x, seed=3):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    same = perm == torch.arange(len(x))
    perm[same] = (perm[same] + 1) % len(x)
    return x[perm.to(x.device)]
for n in (2000, 1500):
    x, y, _ = subset(tr, n, 0)
    for s in (0, 1, 2):
        emit(stage="dr3", set="baseline", src="-", n=n, seed=s, **eval_model(fit(x, y, 30, seed=s)))
    for sname in ("robust", "robust10_5", "robust10_4s3", "robust20", "std", "std20", "std60_2"):
        z, d = invert(srcs[sname], x, start_of(x), steps=200, step_size=0.5, step_decay="cosine")
        for s in (0, 1, 2):
            emit(stage="dr3", set=sname, src=sname, n=n, seed=s, **eval_model(fit(z, y, 30, seed=s)))
for sname in ("std", "std20", "std60_2"):
    for eps in (4.0, 5.0):
        for pol in ("random", "deterministic"):
            relabel_exp(sname, srcs[sname], eps, pol, steps=40)
emit(stage="done")
