"""The theory toy (PAPER.md section 5) end to end, plus Trainer determinism / resume and evaluation checks."""

import io

import pytest
import torch

from sweeper.science import data, models
from sweeper.science.attacks import AttackConfig, pgd
from sweeper.science.evaluation import EvalResult, accuracy, check_model, evaluate
from sweeper.science.training import TrainConfig, Trainer, train

D, P = 100, 0.95
ETA = data.toy_eta(D)
EPS = 2 * ETA                                   # flips every weak feature on average
ATTACK = AttackConfig(norm="linf", eps=EPS, steps=10, step_size=EPS / 4)
CFG = dict(epochs=5, batch_size=128, lr=0.05, momentum=0.9, weight_decay=0.0, schedule="cosine")


@pytest.fixture(scope="module")
def toy():
    # the toy's ops are tiny: one thread avoids thread-pool synchronisation costs (large on a busy machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield (data.load("toy", "train", d=D, p=P, n_train=5000, seed=0),
           data.load("toy", "test", d=D, p=P, n_test=2000, seed=0))
    torch.set_num_threads(threads)


def _linear(ds, seed=0):
    torch.manual_seed(seed)
    return models.build("linear", num_classes=2, in_shape=(D + 1,), mean=ds.mean, std=ds.std)


@pytest.fixture(scope="module")
def standard_model(toy):
    tr, _ = toy
    m = _linear(tr)
    hist = train(m, tr.x, tr.y, TrainConfig(**CFG), seed=0, bounds=None)
    assert len(hist) == CFG["epochs"] and hist[-1]["epoch"] == CFG["epochs"]
    return m.eval()


def test_standard_model_accurate_but_not_robust(toy, standard_model):
    _, te = toy
    res = evaluate(standard_model, te.x, te.y, {"linf": ATTACK}, bounds=None,
                   generator=torch.Generator().manual_seed(0))
    assert isinstance(res, EvalResult) and res.n == len(te.y)
    assert res.clean_acc > 0.95
    assert res.robust_acc["linf"] < 0.10
    assert res.worst_acc == pytest.approx(res.robust_acc["linf"])
    assert res.clean_flags.dtype == torch.bool and res.clean_flags.shape == (len(te.y),)
    assert not (res.robust_flags["linf"] & ~res.clean_flags).any()   # robust implies clean-correct
    assert accuracy(standard_model, te.x, te.y) == pytest.approx(res.clean_acc)


def test_adversarial_training_relies_on_the_robust_feature(toy):
    tr, te = toy
    m = _linear(tr)
    train(m, tr.x, tr.y, TrainConfig(**CFG), adversarial=ATTACK, seed=0, bounds=None)
    m.eval()
    res = evaluate(m, te.x, te.y, {"linf": ATTACK}, bounds=None)
    assert abs(res.clean_acc - P) < 0.05
    assert abs(res.robust_acc["linf"] - P) < 0.05
    w = m.head.weight[1] - m.head.weight[0]
    assert w[0].abs() > w[1:].abs().max()       # weight on x0, the robust feature


def test_d_det_teaches_the_true_labels(toy, standard_model):
    tr, te = toy
    attack = AttackConfig(norm="linf", eps=EPS, steps=20, step_size=EPS / 8)
    try:
        from sweeper.science.synthesis import relabel
    except ImportError:
        relabel = None
    if relabel is not None:
        out = relabel(standard_model, tr.x, tr.y, policy="deterministic", num_classes=2, attack=attack,
                      bounds=None)
        x_det, y_det = out["x"], out["y"]
    else:
        y_det = (tr.y + 1) % 2
        x_det = pgd(standard_model, tr.x, y_det, attack, targeted=True, bounds=None)
    assert torch.equal(y_det, (tr.y + 1) % 2)
    assert (x_det - tr.x).abs().max() <= EPS + 1e-5
    with torch.no_grad():
        assert float((standard_model(x_det).argmax(1) == y_det).float().mean()) > 0.8   # the attack hits
    m = _linear(tr, seed=1)
    train(m, x_det, y_det, TrainConfig(**CFG), seed=0, bounds=None)
    m.eval()
    # every label in D_det is "wrong", yet the non-robust features it carries generalise to the true labels
    assert accuracy(m, te.x, te.y) > 0.80


# --------------------------------------------------------------------------- determinism and resume
def _images(n=128):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _cnn(seed=0):
    torch.manual_seed(seed)
    return models.build("small_cnn", num_classes=10, in_shape=(1, 28, 28), mean=(0.286,), std=(0.353,))


IMG_CFG = dict(epochs=2, batch_size=64, lr=0.05, schedule="step", step_every=1, gamma=0.5, augment=True)
IMG_RUN = dict(adversarial=AttackConfig(norm="l2", eps=0.5, steps=2, random_start=True), seed=7)


def test_training_is_deterministic_under_a_seed():
    x, y = _images()
    runs = []
    for _ in range(2):
        m = _cnn()
        hist = train(m, x, y, TrainConfig(**IMG_CFG), **IMG_RUN)
        runs.append((m.state_dict(), hist))
    (sa, ha), (sb, hb) = runs
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    assert [r["lr"] for r in ha] == pytest.approx([0.05, 0.025])
    m = _cnn()
    train(m, x, y, TrainConfig(**{**IMG_CFG, "epochs": 1}), **{**IMG_RUN, "seed": 8})
    assert not all(torch.equal(sa[k], m.state_dict()[k]) for k in sa)   # other seed, other run


def test_train_resumes_from_a_checkpoint_identically_and_hooks_see_every_epoch():
    """train(resume=...) continues a checkpoint taken by its on_epoch hook and ends with the weights and rows of
    an uninterrupted run; numbers a hook adds to an epoch's row stay in the history."""
    x, y = _images()
    cfg = TrainConfig(**{**IMG_CFG, "epochs": 3})
    full = _cnn()
    want = train(full, x, y, cfg, **IMG_RUN)
    saved = {}

    class Stop(Exception):
        pass

    def hook(trainer, history):
        history[-1]["seen"] = len(history)
        if trainer.epoch == 1 and not saved:
            buf = io.BytesIO()
            torch.save({"trainer": trainer.state_dict(), "history_rows": history}, buf)
            saved["ckpt"] = buf.getvalue()
            raise Stop()  # killed after its first epoch's checkpoint

    with pytest.raises(Stop):
        train(_cnn(), x, y, cfg, on_epoch=hook, **IMG_RUN)
    resumed = _cnn(seed=5)
    ckpt = torch.load(io.BytesIO(saved["ckpt"]), weights_only=True)
    got = train(resumed, x, y, cfg, resume=ckpt, on_epoch=hook, **IMG_RUN)
    assert [r["epoch"] for r in got] == [1, 2, 3] and [r["seen"] for r in got] == [1, 2, 3]
    assert [r["train_loss"] for r in got] == [r["train_loss"] for r in want]
    assert all(torch.equal(full.state_dict()[k], resumed.state_dict()[k]) for k in full.state_dict())


def test_state_dict_round_trips_and_resumes_identically():
    x, y = _images()
    cfg = TrainConfig(**IMG_CFG)
    a = Trainer(_cnn(), x, y, cfg, **IMG_RUN)
    a.run_epoch()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["epoch"] == 1
    b = Trainer(_cnn(seed=123), x, y, cfg, **IMG_RUN)  # different init: everything must come from the state
    b.load_state_dict(state)
    assert b.epoch == 1
    ra, rb = a.run_epoch(), b.run_epoch()
    assert ra["train_loss"] == rb["train_loss"] and ra["lr"] == rb["lr"] and rb["epoch"] == 2
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_run_epoch_row_and_config_validation():
    x, y = _images(100)
    row = Trainer(_cnn(), x, y, TrainConfig(epochs=1, batch_size=33, schedule="constant")).run_epoch()
    assert set(row) >= {"epoch", "train_loss", "train_acc", "lr", "images_per_s"}
    assert row["epoch"] == 1 and row["lr"] == 0.1 and row["images_per_s"] > 0 and 0 <= row["train_acc"] <= 1
    for bad in ({"optimizer": "rmsprop"}, {"schedule": "linear"}, {"lr": -1.0}, {"batch_size": 0},
                {"epochs": 1.5}, {"momentum": 1.0}):
        with pytest.raises(ValueError):
            TrainConfig(**{"epochs": 1, **bad})
    with pytest.raises(ValueError):
        TrainConfig()  # epochs has no default
    with pytest.raises(ValueError):
        Trainer(_cnn(), x, y, TrainConfig(epochs=1), adversarial={"norm": "l2"})
    m = _cnn()
    train(m, x, y, TrainConfig(epochs=1, optimizer="adam", lr=1e-3, schedule="cosine"))


# ------------------------------------------------------------------------------------- check_model
def test_check_model_refusals(toy, standard_model):
    tr, _ = toy
    m = _linear(tr)
    with pytest.raises(ValueError, match="training mode"):
        check_model(m.train())
    check_model(m.eval())

    class Probs(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).softmax(1)

    class Noisy(Probs):
        def forward(self, x):
            return self.inner(x) + torch.randn(len(x), 2)

    x = tr.x[:8]
    with pytest.raises(ValueError, match="probabilities"):
        check_model(Probs(m).eval(), x)
    with pytest.raises(ValueError, match="randomi"):
        check_model(Noisy(m).eval(), x)
    with pytest.raises(ValueError, match="training mode"):
        evaluate(standard_model.train(), tr.x[:10], tr.y[:10], {}, bounds=None)
    standard_model.eval()
