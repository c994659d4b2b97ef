import pytest
import torch

from sweeper.science import models

FAST = ["small_cnn", "wide_cnn", "resnet_small", "mlp", "linear", "airbench", "vgg16"]
SLOW = ["resnet18", "resnet50", "densenet121"]
FEATURES = {"small_cnn": 256, "wide_cnn": 256, "resnet_small": 64, "mlp": 256, "resnet18": 512, "resnet50": 2048, "vgg16": 512,
            "densenet121": 1024, "airbench": 256}


def test_available_lists_every_arch():
    assert set(models.available()) == {"small_cnn", "wide_cnn", "resnet_small", "mlp", "linear", "resnet18",
                                       "resnet50", "vgg16", "densenet121", "airbench"}
    assert set(models.registry) == set(models.available())


@pytest.mark.parametrize("arch", FAST + SLOW)
@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)])
def test_shapes(arch, in_shape):
    torch.manual_seed(0)
    c = in_shape[0]
    m = models.build(arch, num_classes=10, in_shape=in_shape, mean=(0.5,) * c, std=(0.25,) * c).eval()
    x = torch.rand(2, *in_shape)
    with torch.no_grad():
        out, rep = m(x), m.representation(x)
    assert out.shape == (2, 10)
    expected = FEATURES.get(arch, c * in_shape[1] * in_shape[2])
    assert rep.shape == (2, expected)
    with torch.no_grad():
        assert torch.allclose(m.head(rep), out, atol=1e-5)
    if arch == "small_cnn" and in_shape == (1, 28, 28):
        assert rep.shape[1] < 784
        assert sum(p.numel() for p in m.parameters()) < 500_000


def test_normalisation_lives_inside():
    torch.manual_seed(0)
    m = models.build("linear", num_classes=3, in_shape=(1, 4, 4), mean=(0.5,), std=(0.25,)).eval()
    x = torch.rand(5, 1, 4, 4)
    assert torch.allclose(m.representation(x), ((x - 0.5) / 0.25).flatten(1), atol=1e-6)
    assert torch.allclose(m(x), m.head(((x - 0.5) / 0.25).flatten(1)), atol=1e-5)
    assert set(dict(m.named_buffers())) >= {"mean", "std"}
    # per-channel statistics for colour inputs
    m3 = models.build("small_cnn", num_classes=10, in_shape=(3, 32, 32), mean=(0.1, 0.2, 0.3),
                      std=(0.5, 0.5, 0.5))
    assert m3.mean.shape == (1, 3, 1, 1)
    assert "mean" in m3.state_dict()


def test_toy_vector_inputs():
    m = models.build("linear", num_classes=2, in_shape=(101,), mean=(0.0,), std=(1.0,))
    x = torch.randn(7, 101)
    assert m(x).shape == (7, 2)
    assert torch.equal(m.representation(x), x)
    assert models.build("mlp", num_classes=2, in_shape=(101,), mean=(0.0,), std=(1.0,))(x).shape == (7, 2)


def test_gradient_reaches_input():
    m = models.build("small_cnn", num_classes=10, in_shape=(1, 28, 28), mean=(0.3,), std=(0.35,)).eval()
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_arch_lists_names():
    with pytest.raises(ValueError) as e:
        models.build("resnet9000", num_classes=10, in_shape=(1, 28, 28), mean=(0.0,), std=(1.0,))
    msg = str(e.value)
    assert "resnet9000" in msg and all(a in msg for a in models.available())
