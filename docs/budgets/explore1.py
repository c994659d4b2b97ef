"""Budget exploration for the Fashion-MNIST demo (run on a GPU; results as JSON lines)."""
import json, math, os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "snap"))
import torch
import torch.nn.functional as F
from sweeper.science import data as D, models as M
from sweeper.science.attacks import AttackConfig, pgd
from sweeper.science.training import TrainConfig, train
from sweeper.science.synthesis import invert, relabel, start_points
from sweeper.science import aa

DEV = "cuda" if torch.cuda.is_available() else "cpu"
OUT = os.environ.get("OUT", "/tmp")
QUICK = os.environ.get("QUICK") == "1"
LOG = open(os.path.join(OUT, "explore1.jsonl"), "a")
T0 = time.time()
def emit(**kw):
    kw["t"] = round(time.time() - T0, 1)
    print(json.dumps(kw), flush=True); LOG.write(json.dumps(kw) + "\n"); LOG.flush()

root = os.path.join(os.path.dirname(__file__), "fmnist")
tr = D.load("fashion_mnist", "train", root=root); te = D.load("fashion_mnist", "test", root=root)
def subset(ds, n, seed=0):
    idx = D.subset_indices(len(ds.y), n, seed); return ds.x[idx].to(DEV), ds.y[idx].to(DEV), idx
N_TEST = 300 if QUICK else 1000
xte, yte, _ = subset(te, N_TEST, 0)

def new(arch="small_cnn", seed=0):
    torch.manual_seed(seed)
    return M.build(arch, num_classes=10, in_shape=(1, 28, 28), mean=tr.mean, std=tr.std).to(DEV)

def fit(x, y, epochs, seed=0, arch="small_cnn", adv=None, lr=0.05):
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

def eval_model(m, strong=True):
    res = {"clean": acc(m, xte, yte)}
    for eps in (0.5, 1.0):
        ok, fl = robust_flags(m, xte, yte, attacks_for(eps, strong and eps == 1.0))
        worst = ok.clone()
        for k, f in fl.items():
            res[k] = float(f.float().mean()); worst &= f
        res[f"worst_{eps}"] = float(worst.float().mean())
    return res

# ------------------------------------------------------------------ sources
t = time.time()
xs, ys, idx_s = subset(tr, 10000, 0)
std = fit(xs, ys, 3); std_b = fit(xs, ys, 3, seed=1)
xr, yr, _ = subset(tr, 5000, 0)
robust = fit(xr, yr, 4, adv=AttackConfig(norm="l2", eps=1.0, steps=5, step_size=0.4))
xb, yb, _ = subset(tr, 2000 if QUICK else 60000, 0)
std60 = fit(xb, yb, 1 if QUICK else 8)
emit(stage="sources", wall=round(time.time() - t, 1), std=acc(std, xte, yte), std60=acc(std60, xte, yte),
     robust=acc(robust, xte, yte))

N = 300 if QUICK else 1000
xd, yd, idx_d = subset(tr, N, 0)

# ------------------------------------------------------------------ relabel: hit rate and retrained accuracy
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

# ------------------------------------------------------------------ inversion convergence
def inv_adam(model, xt, x0, steps, lr, decay="cosine"):
    with torch.no_grad():
        target = model.representation(xt).flatten(1)
    z = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for t in range(steps):
        for gp in opt.param_groups:
            gp["lr"] = lr * (0.5 * (1 + math.cos(math.pi * t / steps)) if decay == "cosine" else 1.0)
        loss = (model.representation(z).flatten(1) - target).pow(2).sum(1).sum()
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            z.clamp_(0, 1)
    with torch.no_grad():
        d = (model.representation(z).flatten(1) - target).norm(dim=1)
    return z.detach(), d

def start_of(x, seed=3):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    same = perm == torch.arange(len(x))
    perm[same] = (perm[same] + 1) % len(x)
    return x[perm.to(x.device)]

def d0(model, xt, x0):
    with torch.no_grad():
        return (model.representation(x0).flatten(1) - model.representation(xt).flatten(1)).norm(dim=1)

INV = {} if QUICK else {
    "sgdn60x0.5cos": lambda m, xt, x0: invert(m, xt, x0, steps=60, step_size=0.5, step_decay="cosine"),
    "sgdn200x0.5cos": lambda m, xt, x0: invert(m, xt, x0, steps=200, step_size=0.5, step_decay="cosine"),
    "sgdn500x0.1": lambda m, xt, x0: invert(m, xt, x0, steps=500, step_size=0.1),
    "sgdn1000x0.1": lambda m, xt, x0: invert(m, xt, x0, steps=1000, step_size=0.1),
    "adam100x0.01cos": lambda m, xt, x0: inv_adam(m, xt, x0, 100, 0.01),
    "adam100x0.03cos": lambda m, xt, x0: inv_adam(m, xt, x0, 100, 0.03),
    "adam200x0.01cos": lambda m, xt, x0: inv_adam(m, xt, x0, 200, 0.01),
    "adam50x0.03cos": lambda m, xt, x0: inv_adam(m, xt, x0, 50, 0.03),
}
INV["adam100x0.03cos"] = lambda m, xt, x0: inv_adam(m, xt, x0, 5 if QUICK else 100, 0.03)
x5, y5, _ = subset(tr, 100 if QUICK else 300, 0)
for src_name, src in (("robust", robust), ("std", std)):
    base = d0(src, x5, start_of(x5))
    for name, fn in INV.items():
        t = time.time(); z, d = fn(src, x5, start_of(x5)); torch.cuda.synchronize() if DEV == "cuda" else None
        emit(stage="inv_conv", src=src_name, method=name, ratio=float((d / base).mean()),
             ratio_median=float((d / base).median()), wall=round(time.time() - t, 2))

# ------------------------------------------------------------------ D_R / D_NR vs same-size baseline
def dr_exp(method, n=N, seeds=(0, 1), epochs=2 if QUICK else 30):
    x, y, _ = subset(tr, n, 0)
    rows = {}
    for sname, src in (("d_r", robust), ("d_nr", std)):
        z, d = INV[method](src, x, start_of(x))
        for s in seeds:
            m = fit(z, y, epochs, seed=s)
            emit(stage="dr", set=sname, method=method, n=n, seed=s, epochs=epochs, **eval_model(m))
    for s in seeds:
        m = fit(x, y, epochs, seed=s)
        emit(stage="dr", set="baseline", method="-", n=n, seed=s, epochs=epochs, **eval_model(m))

for m_ in (["adam100x0.03cos"] if QUICK else ["sgdn60x0.5cos", "adam100x0.03cos", "sgdn1000x0.1", "adam200x0.01cos"]):
    dr_exp(m_)
if not QUICK:
    dr_exp("adam100x0.03cos", n=2000)
    dr_exp("adam100x0.03cos", epochs=60)

for policy in ("random", "deterministic"):
    for src_name, src in (("std", std), ("std60", std60)):
        for eps in ((2.0,) if QUICK else (1.0, 2.0, 3.0, 4.0, 6.0)):
            relabel_exp(src_name, src, eps, policy)
if not QUICK:
    for eps in (2.0, 3.0, 4.0):
        relabel_exp("std", std, eps, "deterministic", n=5000)
emit(stage="done")
