"""ckpt layers beyond YOLO (issue 13 point 3): module groups of torchvision/timm-style models, --depth, --freeze by
key prefix and --trainable, checked against torch's own named_parameters() and a hand-written requires_grad loop.
torchvision does not import beside the CPU torch here, so the VGG and ResNet shapes are built with plain torch.nn
under torchvision's attribute names (features/avgpool/classifier; conv1/bn1/layer1..layer4/fc)."""

import json

import pytest
import torch
from torch import nn

from conftest import assert_clean_failure, run


def vgg():
    torch.manual_seed(0)
    m = nn.Module()
    m.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                               nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    m.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    m.classifier = nn.Sequential(nn.Linear(32, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 16), nn.ReLU(True),
                                 nn.Dropout(), nn.Linear(16, 5))
    return m


def block(cin, cout):
    b = nn.Module()
    b.conv1, b.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
    b.conv2, b.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
    return b


def resnet():
    torch.manual_seed(1)
    m = nn.Module()
    m.conv1, m.bn1, m.relu, m.maxpool = nn.Conv2d(3, 4, 7, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3)
    for i, (cin, cout) in enumerate([(4, 4), (4, 8), (8, 8), (8, 16)], 1):
        setattr(m, f"layer{i}", nn.Sequential(block(cin, cout), block(cout, cout)))
    m.avgpool, m.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)
    return m


def tied():
    """A language-model head tied to its embedding: named_parameters() yields the shared weight once."""
    m = nn.Module()
    m.embed, m.body, m.head = nn.Embedding(11, 6), nn.Linear(6, 6), nn.Linear(6, 11, bias=False)
    m.head.weight = m.embed.weight
    return m


def saved(model, tmp, form):
    path = tmp / f"{form}.pt"
    torch.save(model if form == "module" else model.state_dict(), path)
    return path


def layers(path, *args):
    p = run("layers", str(path), *args, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def oracle(model, keep):
    """The hand-written loop a training script runs, then the names it left frozen and trainable."""
    for n, p in model.named_parameters():
        p.requires_grad = keep(n)
    named = list(model.named_parameters())
    return [n for n, p in named if not p.requires_grad], [n for n, p in named if p.requires_grad]


FORMS = ["module", "state_dict"]


@pytest.mark.parametrize("form", FORMS)
def test_trainable_classifier_6_matches_a_requires_grad_loop(tmp, form):
    model = vgg()
    report = layers(saved(model, tmp, form), "--trainable", "classifier.6")
    frozen, trainable = oracle(model, lambda n: n.startswith("classifier.6."))
    assert trainable == ["classifier.6.weight", "classifier.6.bias"]
    assert report["freeze"]["mode"] == "trainable" and report["freeze"]["patterns"] == ["classifier.6."]
    assert report["freeze"]["frozen"] == frozen and report["freeze"]["trainable"] == trainable
    params = dict(model.named_parameters())
    assert report["freeze"]["trainable_parameters"] == sum(params[n].numel() for n in trainable)
    assert report["freeze"]["frozen_parameters"] == sum(params[n].numel() for n in frozen)
    assert not any("running" in n or "num_batches" in n for n in frozen)  # buffers are no parameters


@pytest.mark.parametrize("form", FORMS)
def test_freeze_features_prefix(tmp, form):
    model = vgg()
    report = layers(saved(model, tmp, form), "--freeze", "features")
    frozen, trainable = oracle(model, lambda n: not n.startswith("features."))
    assert report["freeze"]["mode"] == "freeze"
    assert report["freeze"]["frozen"] == frozen and report["freeze"]["trainable"] == trainable
    # per-group frozen counts follow
    rows = {r["prefix"]: r for r in report["layers"]}
    assert rows["features."]["frozen_parameters"] == rows["features."]["parameters"] > 0
    assert rows["classifier."]["frozen_parameters"] == 0


@pytest.mark.parametrize("form", FORMS)
def test_resnet_trainable_fc_layer4(tmp, form):
    model = resnet()
    report = layers(saved(model, tmp, form), "--trainable", "fc", "layer4")
    frozen, trainable = oracle(model, lambda n: n.startswith(("fc.", "layer4.")))
    assert report["freeze"]["frozen"] == frozen and report["freeze"]["trainable"] == trainable


@pytest.mark.parametrize("form", FORMS)
def test_groups_and_depth_follow_the_module_tree(tmp, form):
    model = vgg()
    path = saved(model, tmp, form)
    mods = dict(model.named_modules())
    params = dict(model.named_parameters())
    for depth in (1, 2, 3):
        report = layers(path, "--depth", str(depth))
        # The module tree at that depth (a leaf module stands for itself below it), keeping only modules that
        # hold tensors, as state_dict keys show them.
        want = list(dict.fromkeys(
            ".".join(k.split(".")[:min(depth, k.count("."))]) for k in model.state_dict()))
        assert all(len(mods[n].state_dict()) for n in want)
        assert [r["prefix"] for r in report["layers"]] == [n + "." for n in want]
        for r in report["layers"]:
            p = r["prefix"]
            assert r["parameters"] == sum(v.numel() for k, v in params.items() if k.startswith(p))
            assert r["tensors"] == len(mods[p[:-1]].state_dict())
            if form == "module":
                m = type(mods[p[:-1]])
                assert r["module"] == f"torch.nn.modules.{m.__module__.split('.')[-1]}.{m.__name__}"
        assert report["parameters"] == sum(p.numel() for p in model.parameters())
    assert "classifier.6." in [r["prefix"] for r in layers(path, "--depth", "2")["layers"]]
    assert [r["prefix"] for r in layers(path)["layers"]] == ["features.", "classifier."]


@pytest.mark.parametrize("form", FORMS)
def test_tied_parameter_counts_once(tmp, form):
    model = tied()
    report = layers(saved(model, tmp, form), "--trainable", "body")
    frozen, trainable = oracle(model, lambda n: n.startswith("body."))
    assert report["freeze"]["frozen"] == frozen == ["embed.weight"]
    assert report["freeze"]["trainable"] == trainable
    assert report["parameters"] == sum(p.numel() for p in model.parameters())


def test_the_table_for_people(tmp):
    path = saved(vgg(), tmp, "module")
    p = run("layers", str(path), "--trainable", "classifier.6")
    assert p.returncode == 0, p.stderr
    assert "trainable classifier.6.:" in p.stdout and "classifier.0.weight" in p.stdout  # frozen list
    assert "features.0.weight" in p.stdout


def test_unknown_prefix_and_bad_combinations_fail_cleanly(tmp):
    path = saved(vgg(), tmp, "state_dict")
    assert_clean_failure(run("layers", str(path), "--trainable", "classifier.9"), path)
    assert_clean_failure(run("layers", str(path), "--freeze", "feature"), path)  # a prefix is whole components
    for args in (["--freeze", "features", "--trainable", "classifier"], ["--depth", "0"]):
        p = run("layers", str(path), *args)
        assert p.returncode != 0 and p.stdout == ""


def vit():
    """timm style: parameters directly on the model (cls_token, pos_embed) beside submodules."""
    torch.manual_seed(2)
    m = nn.Module()
    m.cls_token, m.pos_embed = nn.Parameter(torch.randn(1, 1, 8)), nn.Parameter(torch.randn(1, 5, 8))
    m.patch_embed = nn.Module()
    m.patch_embed.proj = nn.Conv2d(3, 8, 4, 4)
    m.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(2)])
    m.norm, m.head = nn.LayerNorm(8), nn.Linear(8, 3)
    return m


@pytest.mark.parametrize("form", FORMS)
def test_top_level_parameters_are_their_own_group(tmp, form):
    model = vit()
    path = saved(model, tmp, form)
    report = layers(path)
    params = dict(model.named_parameters())
    tops = list(dict.fromkeys(k.split(".")[0] for k in params))
    assert [r["prefix"] for r in report["layers"]] == [t + "." for t in tops]
    for r in report["layers"]:
        assert r["parameters"] == sum(v.numel() for k, v in params.items() if k.split(".")[0] + "." == r["prefix"])
        assert r["parameters"] > 0
    report = layers(path, "--freeze", "cls_token", "pos_embed", "patch_embed")
    frozen, trainable = oracle(model, lambda n: n.split(".")[0] not in ("cls_token", "pos_embed", "patch_embed"))
    assert report["freeze"]["frozen"] == frozen and report["freeze"]["trainable"] == trainable
