"""The Fourier-sensitivity control (Gilmer & Hendrycks, Distill discussion; Yin et al. 2019): the basis images are
unit-norm cosines with exactly two frequencies, the heatmap finds the one frequency a model reads, and a sweep's
``fourier`` stage runs, is stored, logged and reported; a ``from:`` that names no train stage is refused."""
import io
import json
import math
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch import nn

from sweeper.errors import SpecError
from sweeper.science import fourier
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import loads

from test_data import need_fmnist


# ------------------------------------------------------------------------------------------- basis
CASES = [((1, 28, 28), (0, 0)), ((1, 28, 28), (3, 5)), ((1, 28, 28), (-2, 7)), ((1, 28, 28), (-14, 0)),
         ((1, 28, 28), (-14, -14)), ((1, 28, 28), (13, -14)), ((3, 7, 9), (2, -4)), ((3, 7, 9), (-3, 4)),
         ((3, 8, 8), (-4, 3))]


@pytest.mark.parametrize("shape, freq", CASES, ids=[f"{s}-{f}" for s, f in CASES])
def test_basis_image_has_unit_norm_and_exactly_its_two_frequencies(shape, freq):
    c, h, w = shape
    i, j = freq
    u = fourier.fourier_basis(shape, i, j)
    assert u.shape == shape and u.dtype == torch.float32
    assert all(torch.equal(u[k], u[0]) for k in range(c))  # the same image in every channel
    norms = u.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(c), atol=1e-5), norms
    mag = torch.fft.fft2(u[0].double()).abs()
    on = torch.zeros(h, w, dtype=torch.bool)
    on[i % h, j % w] = on[(-i) % h, (-j) % w] = True
    assert mag[~on].max() < 1e-6 * mag.max(), "energy outside (i, j) and (-i, -j)"
    assert mag[on].min() > 0.1 * mag.max()
    # the centred convention is torch.fft.fftshift's: the heatmap cell of (i, j) holds that frequency
    shifted = torch.fft.fftshift(mag)
    assert shifted[fourier.index_of(i, j, (h, w))] == mag[i % h, j % w]
    assert fourier.frequency(*fourier.index_of(i, j, (h, w)), (h, w)) == (
        ((i + h // 2) % h) - h // 2, ((j + w // 2) % w) - w // 2)


@pytest.mark.parametrize("shape", [(28, 28), (7, 9), (8, 8), (1, 5)])
def test_one_representative_per_symmetric_pair(shape):
    h, w = shape
    reps = fourier.pair_representatives(shape)
    covered = {cell for r in reps for cell in (r, fourier.mirror(*r, shape))}
    assert covered == {(r, c) for r in range(h) for c in range(w)}
    self_mirror = sum(fourier.mirror(r, c, shape) == (r, c) for r in range(h) for c in range(w))
    assert len(reps) == (h * w + self_mirror) // 2
    # U_{i,j} = U_{-i,-j}: what makes evaluating one of each pair enough
    mirrors = [fourier.mirror(*r, shape) for r in reps]
    assert torch.allclose(fourier.basis_images(reps, shape), fourier.basis_images(mirrors, shape), atol=1e-6)


# ----------------------------------------------------------------------------------------- heatmap
class OneFrequency(nn.Module):
    """Reads only the dot product s = <x - 0.5, U_{a,b}> (a linear layer holding the basis image) and calls
    class 1 when |s| > threshold, else class 0."""

    def __init__(self, shape, a, b, threshold):
        super().__init__()
        self.read = nn.Linear(math.prod(shape), 1)
        with torch.no_grad():
            u = fourier.fourier_basis(shape, a, b).flatten()
            self.read.weight.copy_(u.view(1, -1))
            self.read.bias.fill_(-0.5 * float(u.sum()))
        self.threshold = threshold

    def forward(self, x):
        s = self.read(x.flatten(1)).abs()
        return torch.cat([self.threshold - s, s - self.threshold], dim=1)


@pytest.mark.parametrize("shape, freq", [((1, 28, 28), (3, -5)), ((3, 8, 8), (-4, 1))])
def test_heatmap_finds_the_one_frequency_a_model_reads(shape, freq):
    torch.manual_seed(0)
    c, h, w = shape
    x = (0.5 + 0.01 * torch.randn(20, *shape)).clamp(0, 1)  # mid-grey: eps 1 of noise never clips here
    y = torch.zeros(20, dtype=torch.long)
    eps = 1.0
    model = OneFrequency(shape, *freq, threshold=eps * c / 2)  # the noise moves s by eps per channel
    assert (model(x).argmax(1) == 0).all()  # clean: every image right
    heat = fourier.fourier_heatmap(model, x, y, eps, batch_size=4096, generator=torch.Generator().manual_seed(1))
    assert heat.shape == (h, w)
    hot = {fourier.index_of(*freq, (h, w)), fourier.index_of(-freq[0], -freq[1], (h, w))}
    want = torch.zeros(h, w)
    for cell in hot:
        want[cell] = 1.0
    assert torch.equal(heat, want), [(tuple(c), float(heat[tuple(c)])) for c in (heat != want).nonzero().tolist()]
    if h * w <= 64:  # the signs are drawn before any evaluation: the batch size changes nothing
        small = fourier.fourier_heatmap(model, x, y, eps, batch_size=7, generator=torch.Generator().manual_seed(1))
        assert torch.equal(heat, small)
    bands = fourier.band_errors(heat)
    assert bands["mean_error"] == pytest.approx(len(hot) / (h * w))


# -------------------------------------------------------------------------------------------- sweep
SWEEP = """
name: fz
seed: 0
data: {dataset: fashion_mnist, test_size: 40}
run: {store: STORE}
stages:
  std: {kind: train, arch: mlp, train_size: 200, train: {epochs: 1, batch_size: 100, lr: 0.05}}
  robust: {kind: train, arch: mlp, train_size: 200, train: {epochs: 1, batch_size: 100, lr: 0.05},
           adversarial: {norm: l2, eps: 0.5, steps: 2}}
  eval: {kind: evaluate, from: std}
  fz: {kind: fourier, from: [std, robust], eps: 2/2, size: 30}
"""


def test_plan_has_one_fourier_node_per_model_and_leaves_other_keys_alone():
    with_f = build_plan(loads(SWEEP.replace("STORE", "/nonexistent")))
    without = build_plan(loads(SWEEP.replace("STORE", "/nonexistent").split("  fz:")[0]))
    fz = [n for n in with_f.nodes.values() if n.kind == "fourier"]
    assert len(fz) == 2 and all(list(n.inputs) == ["model"] for n in fz)
    assert {with_f.nodes[n.inputs["model"]].stage for n in fz} == {"std", "robust"}
    assert [with_f.train_set(n) for n in fz] == ["D", "D_adv"]
    assert fz[0].spec.eps == 1.0 and fz[0].spec.size == 30 and fz[0].spec.seed == 0
    assert set(with_f.nodes) - {n.key for n in fz} == set(without.nodes)
    assert with_f.counts()["fourier"] == 2


class _Recorder:
    def __init__(self):
        self.images, self.summaries = {}, {}

    def log(self, metrics, step=None):
        pass

    def image(self, name, render):
        self.images[name] = render()

    def summary(self, metrics):
        self.summaries.update(metrics)


@need_fmnist
def test_a_fourier_stage_runs_locally_and_is_reported(tmp_path):
    from sweeper.report.report import write_report
    from sweeper.report.tracking import WANDB_NAME
    from sweeper.run.engines import run_plan
    from sweeper.run.kinds import Context, execute
    from sweeper.store.store import Store

    plan = build_plan(loads(SWEEP.replace("STORE", str(tmp_path / "s"))))
    store = Store(str(tmp_path / "s"))
    out = run_plan(plan, store, log=lambda *a: None, wandb_mode="disabled")
    assert out["ran"] == len(plan.nodes) == 5
    fz = [n for n in plan.nodes.values() if n.kind == "fourier"]
    for n in fz:
        meta = store.load_meta(n.key)
        heat = store.load_tensors(n.key)["heatmap"]
        assert heat.shape == (28, 28) and 0 <= heat.min() and heat.max() <= 1
        assert meta["eps"] == 1.0 and meta["n"] == 30 and meta["size"] == 30
        assert meta["mean_error"] == pytest.approx(float(heat.double().mean()))
        assert 0 <= meta["clean_error"] <= 1

    # W&B: the heatmap as an image and the summaries, under names W&B reads as one metric
    rec = _Recorder()
    execute(fz[0], Context.of(plan, store), rec, run=lambda n, c, p: store.load_meta(n.key))
    assert list(rec.images) == ["fourier_heatmap"]
    assert Image.open(io.BytesIO(rec.images["fourier_heatmap"])).format == "PNG"
    assert set(rec.summaries) == {"mean_error", "clean_error", "low_freq_error", "high_freq_error"}
    assert all(WANDB_NAME.match(k) for k in [*rec.images, *rec.summaries])

    written = write_report(plan, store)
    base = tmp_path / "s" / "reports" / "fz"
    assert "fourier.png" in written and Image.open(base / "fourier.png").format == "PNG"
    entries = json.loads((base / "fourier.json").read_text())
    assert [(e["model_label"], e["train_set"], e["arch"], e["eps"]) for e in entries] == [
        ("std", "D", "mlp", 1.0), ("robust", "D_adv", "mlp", 1.0)]
    for e in entries:
        assert {"mean_error", "low_freq_error", "high_freq_error", "clean_error"} <= set(e)
        assert e["mean_error"] == store.load_meta(e["fourier_key"])["mean_error"]
    assert isinstance(json.loads((base / "results.json").read_text()), list)  # its evaluation rows, unchanged
    md = (base / "report.md").read_text()
    assert "## Fourier sensitivity" in md and "![fourier](fourier.png)" in md


def test_wandb_image_is_logged_as_a_wandb_image():
    from sweeper.report.figures import fourier_figure
    from sweeper.report.tracking import NodeRun

    class Run:
        logged = {}

        def log(self, metrics, step=None):
            self.logged.update(metrics)

    png = fourier_figure([("a", torch.rand(6, 6))], eps=1.0)
    run = NodeRun(Run())
    run.image("fourier_heatmap", lambda: png)
    assert run.error is None and type(Run.logged["fourier_heatmap"]).__name__ == "Image"
    NodeRun(None).image("fourier_heatmap", lambda: pytest.fail("drawn without a W&B run"))


# ------------------------------------------------------------------------------------------- refusals
BAD = """
name: bad
data: {dataset: fashion_mnist}
stages:
  std: {kind: train, arch: mlp, train_size: 100, train: {epochs: 1}}
  d_det: {kind: synthesize, from: std, method: relabel, size: 10, targets: deterministic,
          attack: {norm: l2, eps: 1.0}}
  fz: {kind: fourier, from: [std, d_det], eps: 1.0}
"""


def test_fourier_from_a_synthesize_stage_is_refused_in_one_line(tmp_path):
    with pytest.raises(SpecError) as e:
        loads(BAD, "bad.yaml")
    assert str(e.value) == "bad.yaml: stages.fz.from: 'd_det' is a synthesize stage; expected a train stage"
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    r = subprocess.run([sys.executable, "-m", "sweeper", "plan", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"sweeper: invalid sweep file: {path}: stages.fz.from: 'd_det' is a "
                                             "synthesize stage; expected a train stage"], r.stderr


@pytest.mark.parametrize("edit, where, says", [
    (("fourier, from: [std, d_det], eps: 1.0", "fourier, from: std, eps: 29"), "stages.fz.eps", "at most 28"),
    (("fourier, from: [std, d_det], eps: 1.0", "fourier, from: stdd, eps: 1"), "stages.fz.from", "did you mean 'std'"),
    (("fourier, from: [std, d_det], eps: 1.0", "fourier, from: std, eps: 1, size: 0"), "stages.fz.size", "greater"),
    (("fourier, from: [std, d_det], eps: 1.0", "fourier, from: std, eps: 1, norm: l2"), "stages.fz.norm",
     "unknown key"),
])
def test_bad_fourier_stages_are_refused_readably(edit, where, says):
    with pytest.raises(SpecError) as e:
        loads(BAD.replace(*edit), "bad.yaml")
    assert e.value.key_path == where and says in e.value.message and "\n" not in str(e.value)


def test_fourier_needs_images():
    toy = "name: t\ndata: {dataset: toy}\nstages:\n  std: {kind: train, arch: linear, train: {epochs: 1}}\n" \
          "  fz: {kind: fourier, from: std, eps: 1}\n"
    with pytest.raises(SpecError) as e:
        loads(toy, "toy.yaml")
    assert e.value.key_path == "stages.fz.kind" and "expected an image dataset" in e.value.message
