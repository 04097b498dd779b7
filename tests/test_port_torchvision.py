"""Torchvision porter and the porting API, against torch reference networks.

The references below are written here with torchvision's parameter names and forward
semantics (VGG: features / AdaptiveAvgPool2d(7) / classifier; ResNet v1.5 with BasicBlock and
Bottleneck, downsample Sequential), so the test needs no torchvision and no network. Every
BatchNorm gets non-trivial statistics and affine parameters; logits and every stage's
activations must agree to 1e-4 of the largest reference value.
"""

import hashlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

import research.port
from research.checkpoint import load_state
from research.errors import EXIT_USER_ERROR, ConfigError, WeightsError
from research.models import get_model
from research.port import torchvision as tv

# The dev extra installs torch below Python 3.12 only (its CPU wheel); without it, skip the module.
torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).parents[1]
TOLERANCE = 1e-4
VGG_WIDTHS = (64, 128, 256, 512, 512)
# The porter reads the classifier width from the file; 4096 (torchvision's) would add half a
# gigabyte of file I/O per VGG without testing anything the narrower layer does not.
VGG_FC = 256
NUM_CLASSES = 10
# arch -> (input size, images). VGG at 32x32 pools stage5 to 1x1 (copied to 7x7 by the adaptive
# pool); at 64x64 to 2x2 (overlapping bins).
INPUTS = {
    "vgg16": (32, 2),
    "vgg16_bn": (64, 1),
    "resnet18": (64, 2),
    "resnet34": (32, 2),
    "resnet50": (64, 1),
}


# --- torch references --------------------------------------------------------------------------


class TorchVGG(nn.Module):
    """torchvision's VGG: `features` (conv, [bn], relu per block; max pool per stage),
    `avgpool`, `classifier` (linear, relu, dropout, linear, relu, dropout, linear)."""

    def __init__(self, stage_blocks, batch_norm):
        super().__init__()
        layers, channels = [], 3
        for blocks, width in zip(stage_blocks, VGG_WIDTHS, strict=True):
            for _ in range(blocks):
                layers.append(nn.Conv2d(channels, width, 3, padding=1))
                layers += [nn.BatchNorm2d(width)] if batch_norm else []
                layers.append(nn.ReLU())
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(channels * 49, VGG_FC),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(VGG_FC, VGG_FC),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(VGG_FC, NUM_CLASSES),
        )

    def forward(self, x):
        out, stage = {}, 0
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                stage += 1
                out[f"stage{stage}"] = x
        x = torch.flatten(self.avgpool(x), 1)
        out["pre_logits"] = self.classifier[:5](x)
        out["logits"] = self.classifier[5:](out["pre_logits"])
        return out


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """v1.5: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(y)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
    """torchvision's ResNet: conv1/bn1/relu/maxpool, layer1..4, avgpool, fc."""

    def __init__(self, block, layers):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for s, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=True), 1):
            stride = 1 if s == 1 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            stage = [block(inplanes, planes, stride, downsample)]
            inplanes = planes * block.expansion
            stage += [block(inplanes, planes, 1, None) for _ in range(blocks - 1)]
            setattr(self, f"layer{s}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, NUM_CLASSES)

    def forward(self, x):
        out = {"stem": self.maxpool(torch.relu(self.bn1(self.conv1(x))))}
        x = out["stem"]
        for s in range(1, 5):
            x = out[f"stage{s}"] = getattr(self, f"layer{s}")(x)
        out["pre_logits"] = torch.flatten(self.avgpool(x), 1)
        out["logits"] = self.fc(out["pre_logits"])
        return out


def _torch_model(arch: str) -> nn.Module:
    if arch.startswith("vgg"):
        return TorchVGG((2, 2, 3, 3, 3), batch_norm=arch.endswith("_bn"))
    block, layers = {
        "resnet18": (BasicBlock, (2, 2, 2, 2)),
        "resnet34": (BasicBlock, (3, 4, 6, 3)),
        "resnet50": (Bottleneck, (3, 4, 6, 3)),
    }[arch]
    return TorchResNet(block, layers)


def _randomise_batch_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Statistics and affine parameters far from the (0, 1, 1, 0) defaults, so a swapped or
    dropped one shows in the outputs."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.num_batches_tracked.fill_(7)


class Reference:
    """A seeded torch network saved as .pth and .safetensors, with its outputs on `images`."""

    def __init__(self, arch: str, directory: Path):
        self.arch = arch
        generator = torch.Generator().manual_seed(sorted(INPUTS).index(arch))
        torch.manual_seed(sorted(INPUTS).index(arch))
        model = _torch_model(arch)
        _randomise_batch_norms(model, generator)
        model.eval()
        state = model.state_dict()
        self.pth, self.safetensors = directory / f"{arch}.pth", directory / f"{arch}.safetensors"
        torch.save(state, self.pth)
        save_file({k: v.contiguous() for k, v in state.items()}, self.safetensors)
        size, count = INPUTS[arch]
        self.images = torch.randn(count, 3, size, size, generator=generator)
        with torch.no_grad():
            out = model(self.images)
        # NCHW -> NHWC, as our aux holds them.
        self.outputs = {
            k: v.numpy().transpose(0, 2, 3, 1) if v.ndim == 4 else v.numpy() for k, v in out.items()
        }
        self.images_nhwc = self.images.numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """arch -> Reference, built once per module on first use."""
    built = {}

    def get(arch: str) -> Reference:
        if arch not in built:
            built[arch] = Reference(arch, tmp_path_factory.mktemp(arch))
        return built[arch]

    return get


def _relative_error(ours, ref) -> float:
    return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


def _assert_trees_equal(a, b) -> None:
    flat_a = flax.traverse_util.flatten_dict(a, sep="/")
    flat_b = flax.traverse_util.flatten_dict(b, sep="/")
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), key)


# --- numerics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(INPUTS))
def test_port_reproduces_torch_logits_and_stages(reference, arch):
    ref = reference(arch)
    model, variables = research.port.load_pretrained("torchvision", arch, ref.pth)
    # The safetensors file (read without torch) gives bit-identical variables.
    _, from_safetensors = research.port.load_pretrained("torchvision", arch, ref.safetensors)
    _assert_trees_equal(variables, from_safetensors)
    assert ("batch_stats" in variables) == (arch != "vgg16")

    with jax.default_matmul_precision("highest"):
        logits, aux = jax.jit(lambda v, x: model.apply(v, x, train=False))(
            variables, jnp.asarray(ref.images_nhwc)
        )
    ours = {**aux, "logits": logits}
    assert set(ref.outputs) <= set(ours)
    errors = {k: _relative_error(ours[k], v) for k, v in ref.outputs.items()}
    assert max(errors.values()) <= TOLERANCE, errors
    # The outputs are not degenerate (all-zero stages would compare equal trivially).
    assert all(np.std(v) > 1e-3 for v in ref.outputs.values())


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("resnet50", {"name": "resnet50", "num_classes": NUM_CLASSES}),
        ("vgg16", {"name": "vgg16", "num_classes": NUM_CLASSES, "fc_features": VGG_FC}),
    ],
)
def test_model_config_rebuilds_the_model(reference, arch, expected):
    model, variables = research.port.load_pretrained("torchvision", arch, reference(arch).pth)
    config = research.port.model_config(model, arch)
    assert config == expected
    # Through JSON (as port.json stores it) and the registry, the same variable shapes.
    config = json.loads(json.dumps(config))
    rebuilt = get_model(config, num_classes=config.pop("num_classes"))
    shapes = jax.tree.map(lambda a: a.shape, tv.abstract_variables(rebuilt))
    assert shapes == jax.tree.map(np.shape, variables)


def test_preprocess_is_torchvision_imagenet_normalisation():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3)).astype(np.uint8)
    # torchvision: ToTensor (x / 255) then Normalize with the ImageNet numbers.
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    expected = ((torch.from_numpy(images).float() / 255 - mean) / std).numpy()
    for arch in ("resnet18", "vgg16_bn"):
        ours = research.port.preprocess("torchvision", arch)(images)
        np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-6, atol=1e-6)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_arch", "arch", "names"),
    [
        ("resnet18", "resnet50", "layer1.0.conv3.weight"),  # basic vs bottleneck blocks
        ("resnet18", "resnet34", "/stage1/block3/"),  # too few blocks
        ("resnet34", "resnet18", "layer1.2.bn1.running_mean"),  # too many blocks
        ("vgg16", "vgg16_bn", "features.1.running_mean"),
        ("vgg16", "vgg19", "params/stage3/block4/conv"),
        ("resnet18", "vgg16", "features.N.weight"),
    ],
)
def test_wrong_arch_names_a_parameter(reference, file_arch, arch, names):
    with pytest.raises(WeightsError, match=names.replace(".", r"\.")) as info:
        research.port.load_pretrained("torchvision", arch, reference(file_arch).pth)
    assert f"{file_arch}.pth" in str(info.value)


def test_unreadable_files_are_weights_errors(reference, tmp_path):
    good = reference("resnet18").pth.read_bytes()
    cases = {
        "garbage.pth": b"not a zip archive at all",
        "truncated.pth": good[: len(good) // 2],
        "garbage.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}",
        "weights.h5": good,
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    # A whole pickled module (weights_only refuses it) and a training checkpoint around a
    # state_dict.
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")
    torch.save({"epoch": 3, "state_dict": {}}, tmp_path / "checkpoint.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    messages = {
        "garbage.pth": "not a readable state_dict",
        "truncated.pth": "not a readable state_dict",
        "garbage.safetensors": "not a readable .safetensors",
        "weights.h5": "unknown weights format '.h5'",
        "module.pth": "not a readable state_dict",
        "checkpoint.pth": "entry 'epoch' is a int",
        "list.pth": "holds a list, not a state_dict",
    }
    for name, message in messages.items():
        with pytest.raises(WeightsError, match=message) as info:
            research.port.load_pretrained("torchvision", "resnet18", tmp_path / name)
        assert name in str(info.value)


def test_missing_file_says_how_to_get_it(tmp_path):
    missing = tmp_path / "resnet50.pth"
    with pytest.raises(WeightsError, match="does not exist") as info:
        research.port.load_pretrained("torchvision", "resnet50", missing)
    assert "torchvision.models.resnet50(weights='DEFAULT').state_dict()" in str(info.value)
    assert str(missing) in str(info.value)
    # Checked before the Keras porter is imported: the file name keras.applications uses.
    with pytest.raises(WeightsError, match="vgg16_weights_tf_dim_ordering_tf_kernels.h5"):
        research.port.load_pretrained("keras", "vgg16", tmp_path / "vgg16.h5")


def test_unknown_source_or_arch_lists_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="'timm'; known: keras, torchvision"):
        research.port.load_pretrained("timm", "resnet50", tmp_path / "x.pth")
    with pytest.raises(ConfigError, match="'resnet51'; known: vgg11, .*resnet152"):
        research.port.load_pretrained("torchvision", "resnet51", tmp_path / "x.pth")
    with pytest.raises(ConfigError, match="'vgg16_bn'; known: vgg16, vgg19, resnet50"):
        research.port.preprocess("keras", "vgg16_bn")
    assert set(research.port.ARCHS) == {"keras", "torchvision"}
    assert {"vgg16", "resnet18", "resnet34", "resnet50"} <= set(research.port.ARCHS["torchvision"])


# --- launch/port.py ----------------------------------------------------------------------------


def _port_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "launch/port.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_launch_port_writes_a_checkpoint_init_from_can_read(reference, tmp_path):
    ref = reference("resnet18")
    out = tmp_path / "port"
    flags = ["--source=torchvision", "--arch=resnet18", f"--weights={ref.pth}"]
    result = _port_cli(*flags, f"--output={out}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ported torchvision resnet18")
    assert len(result.stdout.strip().splitlines()) == 1

    record = json.loads((out / "port.json").read_text())
    assert record["weights"]["sha256"] == hashlib.sha256(ref.pth.read_bytes()).hexdigest()
    assert record["weights"]["size_bytes"] == ref.pth.stat().st_size
    assert record["model"] == {"name": "resnet18", "num_classes": NUM_CLASSES}
    assert record["preprocessing"]["mean"] == list(tv.MEAN)
    assert record["preprocessing"]["std"] == list(tv.STD)
    assert record["versions"]["torch"] == importlib.metadata.version("torch")
    assert record["created_utc"].endswith("+00:00")

    # What the trainer does for init_from=DIR: restore params and batch_stats from checkpoints/.
    model, variables = research.port.load_pretrained("torchvision", "resnet18", ref.pth)
    device = SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        tv.abstract_variables(model),
    )
    restored = load_state(out / "checkpoints", abstract)
    _assert_trees_equal(restored, variables)

    # The same port again is a no-op; another one into the same directory is refused.
    again = _port_cli(*flags, f"--output={out}")
    assert again.returncode == 0 and again.stdout.startswith("already ported"), again.stderr
    other = _port_cli(
        "--source=torchvision", "--arch=resnet34", f"--weights={ref.pth}", f"--output={out}"
    )
    assert other.returncode == EXIT_USER_ERROR
    assert other.stderr.startswith("error:") and "holds another port" in other.stderr
    assert json.loads((out / "port.json").read_text()) == record
