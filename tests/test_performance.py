"""The fast paths: batched in-memory loading, lazy heavy imports, exported prediction, the
performance options (the benchmark script's own tests are in test_benchmark.py)."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torchmetrics.classification import MulticlassJaccardIndex

from symtrain.backbones import AntialiasedCNN, EquivariantCNN, StandardCNN
from symtrain.data import SyntheticShapes
from symtrain.metrics import JaccardIndex
from symtrain.module import SymmetryModule
from symtrain.symmetry import Augmentation
from symtrain.transforms import Affine, Elastic, Flip, Rot90, Rotation, Shift

ROOT = Path(__file__).resolve().parents[1]


def tiny_shapes(**kwargs: object) -> SyntheticShapes:
    return SyntheticShapes(num_train=96, num_val=32, num_test=40, batch_size=16, **kwargs)


def test_a_batch_is_cut_with_one_indexing_and_matches_the_samples() -> None:
    data = tiny_shapes()
    data.setup("fit")
    loader = data.val_dataloader()
    images, labels = next(iter(loader))
    split = data.splits["val"]
    assert images.dtype == torch.uint8 and images.shape == (16, 1, 32, 32)
    assert torch.equal(images, split.images[:16]) and torch.equal(labels, split.labels[:16])
    assert sum(len(batch[1]) for batch in loader) == len(split)


class Copies(TorchDispatchMode):
    """Records the copies between devices: (source device, target device, non_blocking)."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[tuple[str, str, bool]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func._schema.name == "aten::_to_copy" and "device" in kwargs:
            self.copies.append(
                (args[0].device.type, kwargs["device"].type, kwargs.get("non_blocking", False))
            )
        return func(*args, **kwargs)


def test_batch_indices_reach_the_device_without_blocking() -> None:
    """With the splits on an accelerator ("meta" here), the sampler's indices are copied to it
    without blocking (a blocking copy from host memory waits for the device's queue)."""
    data = tiny_shapes()
    data.trainer = fake_trainer("meta")
    data.setup("fit")
    with Copies() as recorder:
        images, labels = next(iter(data.train_dataloader()))
    assert images.device.type == labels.device.type == "meta" and images.shape == (16, 1, 32, 32)
    assert recorder.copies == [("cpu", "meta", True)]


def fake_trainer(device: str) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


@pytest.mark.parametrize(
    "device,on_device,num_workers,expected",
    [("meta", True, 0, "meta"), ("meta", False, 0, "cpu"), ("meta", True, 2, "cpu"), ("cpu", True, 0, "cpu")],
)
def test_splits_move_to_an_accelerator_once(
    device: str, on_device: bool, num_workers: int, expected: str
) -> None:
    """On an accelerator ("meta" stands in for a GPU here) the splits are copied to it in setup,
    unless worker processes must index them on the host."""
    data = tiny_shapes(on_device=on_device, num_workers=num_workers)
    data.trainer = fake_trainer(device)
    data.setup("fit")
    assert {split.images.device.type for split in data.splits.values()} == {expected}
    assert {split.labels.device.type for split in data.splits.values()} == {expected}


def test_help_imports_neither_escnn_nor_wandb() -> None:
    """The command line starts without the heavy optional imports; a model that needs escnn
    imports it when it is built."""
    code = (
        "import sys\n"
        "from symtrain.cli import main\n"
        "try:\n    main(['fit', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'escnn' not in sys.modules and 'wandb' not in sys.modules, 'imported eagerly'\n"
        "from symtrain.backbones import EquivariantCNN\n"
        "EquivariantCNN(1, width=4, depth=1)\n"
        "assert 'escnn' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # and the help still lists every backbone it did not import the dependencies of
    assert "--model.backbone BACKBONE" in done.stdout and "symtrain.backbones.EquivariantCNN" in done.stdout


def test_top_level_help_lists_every_subcommand_without_importing_torch() -> None:
    """``python -m symtrain --help`` answers from a light parser (no torch, no Lightning), and
    names exactly the subcommands that the command line runs."""
    from lightning.pytorch.cli import LightningCLI

    from symtrain.__main__ import SUBCOMMANDS
    from symtrain.compare import COMMANDS

    assert list(SUBCOMMANDS) == [*LightningCLI.subcommands(), *COMMANDS]
    code = (
        "import sys\n"
        "sys.argv = ['symtrain', '--help']\n"
        "from symtrain.__main__ import run\n"
        "run()\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'numpy'})\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in done.stdout
    assert "python -m symtrain fit --help" in done.stdout


# --- no host syncs in a training step ---

TINY_BACKBONES = {
    "cnn": partial(StandardCNN, width=4, depth=2),
    "aps": partial(
        AntialiasedCNN, width=4, depth=2, downsample="aps", padding_mode="circular", circular=True
    ),
    "escnn_c4": partial(EquivariantCNN, group="C", order=4, width=4, depth=2),
    "escnn_d4": partial(EquivariantCNN, group="D", order=4, width=4, depth=2),
    "escnn_so2": partial(EquivariantCNN, group="SO2", width=4, depth=2),
    "escnn_o2": partial(EquivariantCNN, group="O2", width=4, depth=2),
}


def training_step(module: SymmetryModule, device: str) -> Tensor:
    """What the module does with one training batch: convert and augment it, forward, loss,
    the epoch's metric states, backward."""
    module.__dict__["_trainer"] = SimpleNamespace(training=True)
    batch: tuple[Tensor, ...] = (
        torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8, device=device),
        torch.randint(0, 5, (8,), device=device),
    )
    if module.segmentation:
        batch += (torch.randint(0, 6, (8, 16, 16), dtype=torch.uint8, device=device),)
    loss = module._shared_step(module.on_after_batch_transfer(batch, 0), "train")
    loss.backward()
    return loss


@pytest.mark.parametrize(
    "task,backbone",
    [("classification", name) for name in TINY_BACKBONES]
    + [("segmentation", "cnn"), ("segmentation", "aps")],
)
def test_a_training_step_reads_nothing_back_from_the_device(
    task: str, backbone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On "meta" tensors (shapes without data, standing in for a GPU) any read of a value on
    the host fails: .item(), bool(tensor), and ops whose output size depends on the values
    (bincount, nonzero). So the step queues its work without ever waiting for the device."""
    if backbone.startswith("escnn"):
        # escnn shares basis modules between all models through a global cache: this model
        # gets its own, so that moving it to "meta" leaves every other model alone.
        from escnn.nn.modules.basismanager import basisexpansion_singleblock

        monkeypatch.setattr(basisexpansion_singleblock, "_stored_filters", {})
    module = SymmetryModule(TINY_BACKBONES[backbone], num_classes=5, task=task).to("meta")
    loss = training_step(module, "meta")
    assert loss.device.type == "meta" and module.mean_loss["train_loss"].mean_value.device.type == "meta"


class HostReads(TorchDispatchMode):
    """Records the operators that read a tensor's values back to the host (on a GPU, each
    waits for the device): scalar reads, value-dependent output sizes, boolean-mask indexing."""

    READS = {
        "aten::_local_scalar_dense",  # .item(), bool(tensor)
        "aten::allclose",
        "aten::equal",
        "aten::nonzero",
        "aten::masked_select",
        "aten::bincount",
    }

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func._schema.name
        indices = args[1] if name in ("aten::index", "aten::index_put", "aten::index_put_") else ()
        masks = [i for i in indices if isinstance(i, Tensor) and i.dtype == torch.bool]
        if name in self.READS or masks:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", [Rot90, Flip, Shift, Rotation, Affine, Elastic])
def test_on_device_augmentation_reads_nothing_back(family: type) -> None:
    """kornia cannot move to "meta", so augmentation is checked on the CPU by recording every
    operator that reads values back: none may run at a step, for images or with masks. (The
    first call builds kornia's samplers, checking their ranges once.)"""
    strategy = Augmentation([family()])
    images, masks = torch.rand(8, 1, 16, 16), torch.randint(0, 6, (8, 16, 16))
    strategy.augment(images)
    with HostReads() as recorder:
        strategy.augment(images)
        strategy.augment(images, masks)
    assert recorder.reads == []


def test_host_reads_are_recorded() -> None:
    values = torch.arange(4)
    reads = (
        lambda: values.max().item(),
        lambda: values[values > 1],
        lambda: bool(values.any()),
        lambda: torch.allclose(values, values),
    )
    for read in reads:
        with HostReads() as recorder:
            read()
        assert recorder.reads, read
    with HostReads() as recorder:
        (values * 2).sum()
    assert recorder.reads == []


def test_escnn_layers_slice_with_host_ints_and_keep_their_buffers() -> None:
    """escnn's index buffers of contiguous fields are read as Python ints (no device read per
    layer), equal to the buffers, which stay in the state dict and survive copies."""
    module = SymmetryModule(TINY_BACKBONES["escnn_c4"], num_classes=5, task="segmentation")
    shadowed = 0
    for layer in copy.deepcopy(module.net).modules():
        for name, buffer in layer._buffers.items():
            if "indices" in name and name in layer.__dict__:
                assert layer.__dict__[name] == tuple(buffer.tolist()) and len(buffer) == 2
                shadowed += 1
    decoder_layers = {type(layer).__name__ for layer in module.net.decoder.modules()}
    assert shadowed >= 8 and "InnerBatchNorm" in decoder_layers
    assert any("indices" in key for key in module.state_dict())
    with torch.no_grad():  # the ints are what the layers use: the model still runs the same
        module.eval()
        assert module.net(torch.rand(2, 1, 16, 16)).shape == (2, 6, 16, 16)


@pytest.mark.parametrize("regular", [True, False])
def test_fast_inner_batch_norm_equals_escnn(regular: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """symtrain's InnerBatchNorm (no output copy; a 2-D kernel in eval) gives escnn's outputs
    and running statistics, on regular fields and on a mix of field sizes (escnn's path)."""
    import escnn.gspaces
    import escnn.nn as enn

    from symtrain.backbones.equivariant.layers import InnerBatchNorm

    escnn_forward, escnn_ran = enn.InnerBatchNorm.forward, []
    monkeypatch.setattr(
        enn.InnerBatchNorm, "forward", lambda self, x: escnn_ran.append(self) or escnn_forward(self, x)
    )

    gspace = escnn.gspaces.rot2dOnR2(4)
    fields = 3 * [gspace.regular_repr] if regular else [gspace.regular_repr, gspace.trivial_repr] * 2
    field_type = enn.FieldType(gspace, fields)
    ours, theirs = InnerBatchNorm(field_type), enn.InnerBatchNorm(field_type)
    theirs.load_state_dict(ours.state_dict())
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = enn.GeometricTensor(
            torch.randn(4, field_type.size, 6, 6, generator=generator) * 3 + 1, field_type
        )
        assert torch.allclose(ours(x).tensor, theirs(x).tensor, atol=1e-5)
    for key, value in theirs.state_dict().items():
        assert torch.allclose(ours.state_dict()[key].float(), value.float()), key
    ours.eval(), theirs.eval()
    assert torch.allclose(ours(x).tensor, theirs(x).tensor, atol=1e-5)
    assert (ours in escnn_ran) is not regular  # the fast path ran on regular fields only


@pytest.mark.parametrize("single", [True, False])
def test_fast_fourier_layers_equal_escnn(single: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """symtrain's IIDBatchNorm2d and FourierPointwise give escnn's outputs, gradients and
    running statistics on SO(2) Fourier fields; a mix of field types takes escnn's path."""
    import escnn.gspaces
    import escnn.nn as enn

    from symtrain.backbones.equivariant.layers import FourierPointwise, IIDBatchNorm2d

    escnn_forward, escnn_ran = enn.IIDBatchNorm2d.forward, []
    monkeypatch.setattr(
        enn.IIDBatchNorm2d, "forward", lambda self, x: escnn_ran.append(self) or escnn_forward(self, x)
    )
    gspace = escnn.gspaces.rot2dOnR2(-1)
    irreps = gspace.fibergroup.bl_irreps(2)
    activations = [
        cls(gspace, 3, irreps, function="p_relu", N=8) for cls in (FourierPointwise, enn.FourierPointwise)
    ]
    field_type = activations[0].in_type
    if not single:
        field_type = field_type + enn.FieldType(gspace, 2 * [gspace.irrep(1)])
    ours, theirs = IIDBatchNorm2d(field_type), enn.IIDBatchNorm2d(field_type)
    with torch.no_grad():
        for parameter in ours.parameters():
            parameter.uniform_(0.5, 1.5)
    theirs.load_state_dict(ours.state_dict())
    generator = torch.Generator().manual_seed(0)
    for mode in ("train", "train", "eval"):
        ours.train(mode == "train"), theirs.train(mode == "train")
        x = torch.randn(4, field_type.size, 6, 6, generator=generator) * 2 + 0.5
        inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        outputs = [
            norm(enn.GeometricTensor(t, field_type)) for norm, t in zip((ours, theirs), inputs, strict=True)
        ]
        if single:
            outputs = [activation(out) for activation, out in zip(activations, outputs, strict=True)]
        assert torch.allclose(outputs[0].tensor, outputs[1].tensor, atol=1e-5), mode
        for out in outputs:
            out.tensor.square().sum().backward()
        assert torch.allclose(inputs[0].grad, inputs[1].grad, atol=1e-4), mode
    for key, value in theirs.state_dict().items():
        assert torch.allclose(ours.state_dict()[key].float(), value.float()), key
    assert (ours in escnn_ran) is not single  # the fast path ran on one group of equal fields


@pytest.mark.parametrize("ignore_index", [None, -1])
def test_sync_free_iou_equals_torchmetrics(ignore_index: int | None) -> None:
    generator = torch.Generator().manual_seed(0)
    preds, target = (torch.randint(0, 6, (4, 16, 16), generator=generator) for _ in range(2))
    if ignore_index is not None:
        target[:, :5] = ignore_index
    kwargs = dict(ignore_index=ignore_index, validate_args=False)
    ours, reference = JaccardIndex(6, **kwargs), MulticlassJaccardIndex(6, **kwargs)
    for _ in range(2):
        ours.update(preds, target)
        reference.update(preds, target)
        preds = preds.roll(1, dims=-1)
    assert torch.equal(ours.confmat, reference.confmat)
    assert torch.allclose(ours.compute(), reference.compute())
    with HostReads() as recorder:
        ours.update(preds, target)
    assert recorder.reads == []


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_escnn_predicts_through_its_export_with_the_same_outputs(task: str) -> None:
    backbone = partial(EquivariantCNN, group="C", order=4, width=4, depth=2)
    module = SymmetryModule(backbone, num_classes=8, task=task)
    data = tiny_shapes()
    data.with_masks = task == "segmentation"
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    batches = trainer.predict(module, datamodule=data)
    logits = torch.cat([batch["logits"] for batch in batches])
    module.eval()
    with torch.no_grad():
        expected = module.net(data.splits["test"].images.float() / 255)
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert "_predictor" not in module.__dict__  # the exported copy is dropped after predicting


def train_briefly(module: SymmetryModule, **length: int) -> pl.Trainer:
    """Fit on the tiny shapes on the CPU, training only, with nothing written."""
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **length,
    )
    trainer.fit(module, datamodule=tiny_shapes())
    return trainer


@pytest.mark.parametrize("backbone_name", ["cnn", "escnn_c4"])
def test_channels_last_trains_to_the_same_loss(backbone_name: str) -> None:
    """channels_last changes the memory order only: the same seed gives the same training."""

    def final_loss(channels_last: bool) -> float:
        pl.seed_everything(0, verbose=False)
        if backbone_name == "cnn":
            backbone = partial(StandardCNN, width=4, depth=2)
        else:
            backbone = partial(EquivariantCNN, width=4, depth=2)
        module = SymmetryModule(backbone, num_classes=8, channels_last=channels_last)
        trainer = train_briefly(module, max_epochs=1)
        if channels_last:
            convs = [m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d)]
            assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)
        return float(trainer.callback_metrics["train/loss"])

    assert final_loss(True) == pytest.approx(final_loss(False), rel=1e-4)


def test_compile_option_trains_through_torch_compile() -> None:
    module = SymmetryModule(partial(StandardCNN, width=4, depth=1), num_classes=8, compile=True)
    trainer = train_briefly(module, max_steps=2)
    compiled = module.__dict__["_compiled"]
    assert compiled is not None and compiled._orig_mod is module.net
    assert not any(key.startswith("_compiled") for key in module.state_dict())  # no second copy
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
