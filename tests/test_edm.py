"""EDM checkpoints: our networks, the restricted unpickler (nothing from the file runs), the VP
wrapper against an exact mixture, and convert-edm → teacher → train → sample from the CLI.

The pickles here are written the way EDM's ``torch_utils.persistence`` writes them: each network
object reduces to ``_reconstruct_persistent_obj(meta)`` with the module source in ``meta``. Here
that source would create a marker file if anything executed it.
"""

import builtins
import contextlib
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from gas_solver.cli import main
from gas_solver.errors import CheckpointMismatchError, ConfigError, MissingAssetError
from gas_solver.models import GaussianMixtureModel, edm_networks
from gas_solver.models.edm import EDMModel, is_edm_source, vp_betas, vp_schedule_for
from gas_solver.models.edm_networks import DhariwalUNet, EDMPrecond, SongUNet, VPPrecond
from gas_solver.models.edm_pickle import load_edm_pickle
from gas_solver.models.loading import load_model

# DDPM++ as in EDM's VP checkpoints (augment_dim=9 as with --augment), scaled down to 8x8
TINY_VP = {
    "img_resolution": 8, "img_channels": 3, "label_dim": 0, "use_fp16": False,
    "model_type": "SongUNet", "embedding_type": "positional", "encoder_type": "standard",
    "decoder_type": "standard", "channel_mult_noise": 1, "resample_filter": [1, 1],
    "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
    "dropout": 0.13, "augment_dim": 9,
}  # fmt: skip
TINY_ADM = {"model_channels": 64, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]}


def randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (EDM zero-initialises output layers, which would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return net.eval()


# -- writing pickles the way EDM does ---------------------------------------------------------------
@contextlib.contextmanager
def edm_modules():
    """``torch_utils.persistence`` and ``dnnlib.util`` in ``sys.modules``, as in an EDM checkout:
    its ``_reconstruct_persistent_obj`` executes the pickled module source, as EDM's does."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        exec(meta["module_src"], {})  # what EDM does with the source in the pickle
        return types.SimpleNamespace(**meta["state"])

    class EasyDict(dict):
        pass

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    modules = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
               "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}  # fmt: skip
    modules["torch_utils"].persistence, modules["dnnlib"].util = persistence, util
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield persistence, util
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _persistent(cls: type, persistence, module_src: str) -> type:
    """A subclass that pickles as EDM's persistent classes do (``__dict__`` as state)."""

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "module_src": module_src,
                "class_name": cls.__name__, "state": dict(self.__dict__)}  # fmt: skip
        return persistence._reconstruct_persistent_obj, (meta,)

    return type(cls.__name__, (cls,), {"__reduce__": __reduce__})


class VPLoss:  # EDM's loss object: persistent, plain numbers
    def __init__(self):
        self.beta_d, self.beta_min, self.epsilon_t = 19.9, 0.1, 1e-5


def write_edm_pickle(
    path: Path, net: edm_networks.Precond, marker: Path, protocol: int = 4
) -> Path:
    """``{'ema': net, 'loss_fn', 'augment_pipe', 'dataset_kwargs'}`` as EDM's training loop pickles
    it; every EDM object carries a module source that would create ``marker`` if executed."""
    source = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('executed')\n"
    kwargs = dict(net.init_kwargs)
    model_kwargs = {k: v for k, v in kwargs.items() if k not in ("img_channels", "use_fp16")}
    model_kwargs.update(in_channels=net.img_channels, out_channels=net.img_channels)
    for name in edm_networks.VPPrecond.param_names:  # EDM records only what was passed
        model_kwargs.pop(name, None)
    model_kwargs.pop("model_type")
    with edm_modules() as (persistence, util):
        for module in net.modules():
            cls = type(module)
            if cls.__module__ == edm_networks.__name__:
                module.__class__ = _persistent(cls, persistence, source)
                module._init_args, module._init_kwargs = (), {}
                if isinstance(module, edm_networks.UNetBlock):  # numpy scalars, as in EDM
                    module._init_kwargs = {"skip_scale": np.sqrt(0.5), "init": {"init_weight": 1}}
        net._init_kwargs = {
            k: v for k, v in kwargs.items() if k not in ("beta_d", "beta_min", "M", "epsilon_t")
        }
        net.model._init_kwargs = model_kwargs
        loss = VPLoss()
        loss.__class__ = _persistent(VPLoss, persistence, source)
        data = {
            "ema": net, "loss_fn": loss, "augment_pipe": None,
            "dataset_kwargs": util.EasyDict(class_name="training.dataset.ImageFolderDataset",
                                            path="cifar10-32x32.zip", resolution=8, xflip=False),
        }  # fmt: skip
        path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


@pytest.fixture
def tiny_vp():
    return randomized(VPPrecond(**TINY_VP))


# -- (a) loading a persistence pickle runs nothing from it -----------------------------------------
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_persistence_pickle_loads_without_running_its_source(tmp_path, tiny_vp, protocol):
    marker = tmp_path / "executed"
    path = write_edm_pickle(tmp_path / "edm-tiny.pkl", tiny_vp, marker, protocol)
    with edm_modules():  # control: a plain pickle.load runs the pickled source
        pickle.loads(path.read_bytes())
    assert marker.read_text() == "executed"
    marker.unlink()

    assert "torch_utils.persistence" not in sys.modules
    model = load_model(str(path))
    with edm_modules():  # even with EDM's modules importable, nothing resolves to them
        load_edm_pickle(path)
    assert not marker.exists()
    assert "torch_utils.persistence" not in sys.modules

    assert isinstance(model, EDMModel) and model.source == str(path)
    assert model.sample_shape == (3, 8, 8) and model.prediction_type == "sample"
    assert model.schedule.to_dict() == {"kind": "linear_vp", "beta_0": 0.1, "beta_1": 20.0,
                                         "t_eps": 1e-3}  # fmt: skip
    loaded = model.net
    assert type(loaded) is VPPrecond and isinstance(loaded.model, SongUNet)
    assert loaded.init_kwargs == {**TINY_VP, "beta_d": 19.9, "beta_min": 0.1, "M": 1000,
                                  "epsilon_t": 1e-5}  # fmt: skip
    x, sigma = torch.randn(4, 3, 8, 8), torch.tensor([0.002, 0.3, 2.0, 80.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma), tiny_vp(x, sigma), rtol=0, atol=0)
        # the wrapper (spec §1) in float64, where x/α(1) ≈ 150x does not magnify rounding
        model, reference = model.double(), tiny_vp.double()
        x, t = x.double(), torch.tensor([1.0, 0.5, 0.1, 1e-3], dtype=torch.float64)
        alpha, edm_sigma = model.schedule.alpha(t), model.schedule.edm_sigma(t)
        expected = reference(x / alpha.view(-1, 1, 1, 1), edm_sigma)
        torch.testing.assert_close(model.data_prediction(x, t), expected)
    assert len(model.identity()["weights"]) == 16


def test_pickle_needs_an_ema_network_of_a_known_class(tmp_path, tiny_vp):
    (tmp_path / "nets.pkl").write_bytes(pickle.dumps({"net": 1}))
    with pytest.raises(ConfigError, match="no 'ema' entry"):
        load_edm_pickle(tmp_path / "nets.pkl")
    path = write_edm_pickle(tmp_path / "edm.pkl", tiny_vp, tmp_path / "marker")
    data = path.read_bytes().replace(b"VPPrecond", b"XXPrecond")
    (tmp_path / "other.pkl").write_bytes(data)
    with pytest.raises(ConfigError, match="XXPrecond; supported: VPPrecond"):
        load_edm_pickle(tmp_path / "other.pkl")
    (tmp_path / "zip.pkl").write_bytes(b"PK\x03\x04 not a pickle")
    with pytest.raises(ConfigError, match="not a readable EDM network pickle"):
        load_edm_pickle(tmp_path / "zip.pkl")


def test_missing_files_name_the_file_and_the_release(tmp_path):
    with pytest.raises(MissingAssetError, match="edm-ffhq.pkl not found.*nvlabs-fi-cdn"):
        load_model(str(tmp_path / "edm-ffhq.pkl"))
    folder = tmp_path / "conv"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    assert is_edm_source(str(folder)) and not is_edm_source(str(tmp_path))
    with pytest.raises(MissingAssetError, match="edm.json not found.*convert-edm"):
        load_model(str(folder))


# -- (b) anything else in a pickle is refused -------------------------------------------------------
class Call:
    """An object that unpickles as the call ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize(
    "make, refused",
    [
        (lambda m: Call(os.system, f"touch {m}"), "system"),
        (lambda m: Call(builtins.eval, f"open({str(m)!r}, 'w')"), "builtins.eval"),
        (lambda m: Call(subprocess.Popen, ["touch", str(m)]), "subprocess.Popen"),
        (lambda m: Call(builtins.getattr, "text", "upper"), "builtins.getattr"),
        (lambda m: Call(torch.load, str(m)), "torch.serialization.load"),
    ],
)
def test_code_in_a_pickle_is_refused(tmp_path, make, refused):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": None, "dataset_kwargs": {"path": make(marker)}}))
    with pytest.raises(ConfigError, match=f"refused to load the global .*{refused}"):
        load_model(str(path))
    assert not marker.exists()
    assert main(["convert-edm", "--pkl", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_storage_holding_code_is_refused(tmp_path):
    marker = tmp_path / "executed"
    payload = pickle.dumps(Call(os.system, f"touch {marker}"), protocol=2)
    path = tmp_path / "evil-storage.pkl"
    path.write_bytes(pickle.dumps({"ema": Call(torch.storage._load_from_bytes, payload)}))
    with pytest.raises(ConfigError, match="not a plain torch storage"):
        load_edm_pickle(path)
    assert not marker.exists()


# -- (c) the VP wrapper against an exact mixture ----------------------------------------------------
class MixtureDenoiser(torch.nn.Module):
    """The exact EDM denoiser of an isotropic Gaussian mixture, written from Gaussian conditioning:
    with x̃ = x₀ + σ̃ n, component k gives x̃ ~ N(μ_k, (s_k² + σ̃²) I) and
    E[x₀ | x̃, k] = μ_k + s_k²/(s_k² + σ̃²)·(x̃ − μ_k); D(x̃; σ̃) = Σ_k r_k(x̃) E[x₀ | x̃, k]."""

    def __init__(self, means, stds, weights):
        super().__init__()
        self.register_buffer("means", means.flatten(1))
        self.register_buffer("var0", stds**2)
        self.register_buffer("log_w", (weights / weights.sum()).log())

    def forward(self, x, sigma, class_labels=None):
        flat = x.flatten(1)
        var = self.var0 + sigma[:, None] ** 2  # (B, K)
        diff = flat[:, None, :] - self.means  # (B, K, D)
        log_p = self.log_w - 0.5 * flat.shape[1] * var.log() - 0.5 * diff.pow(2).sum(-1) / var
        resp = log_p.softmax(dim=1)
        post = self.means + (self.var0 / var)[..., None] * diff
        return (resp[..., None] * post).sum(1).view_as(x)


def test_vp_wrapper_matches_the_exact_mixture():
    gen = torch.Generator().manual_seed(3)
    means = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)
    stds = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.5], dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0], dtype=torch.float64)
    exact = GaussianMixtureModel(means, stds, weights)
    wrapped = EDMModel(MixtureDenoiser(means, stds, weights), (1, 4, 4))
    assert wrapped.schedule.to_dict() == exact.schedule.to_dict()  # linear VP, 0.1 → 20
    x0 = exact.sample_data(6, generator=gen)
    for t in (1.0, 0.7, 0.3, 0.05, 1e-3, 1e-4):
        t = torch.tensor(t, dtype=torch.float64)
        x = exact.schedule.alpha(t) * x0 + exact.schedule.sigma(t) * torch.randn(
            x0.shape, generator=gen, dtype=torch.float64
        )
        torch.testing.assert_close(wrapped.noise_prediction(x, t), exact.noise_prediction(x, t))
        torch.testing.assert_close(wrapped.data_prediction(x, t), exact.data_prediction(x, t))
    assert wrapped.nfe == 12


def test_schedule_of_each_preconditioning():
    vp = VPPrecond(**TINY_VP)
    t = torch.tensor([1e-4, 0.01, 0.5, 1.0], dtype=torch.float64)
    schedule = vp_schedule_for(vp)
    assert (schedule.beta_0, schedule.beta_1) == (0.1, 20.0)
    # network time c_noise/(M−1) = σ⁻¹(σ̃(t)) is t itself, and σ̃(t) is EDM's σ(t)
    torch.testing.assert_close(vp.sigma_inv(schedule.edm_sigma(t)), t)
    torch.testing.assert_close(vp.sigma(t), schedule.edm_sigma(t))
    assert vp_betas(0.0, float("inf")) == (0.1, 19.9)  # EDMPrecond's range covers the default
    beta_min, beta_d = vp_betas(0.02, 100.0)  # VEPrecond's: the line through both ends

    def sigma(s):
        return np.sqrt(np.expm1(0.5 * beta_d * s**2 + beta_min * s))

    assert np.isclose(sigma(1.0), 100.0) and np.isclose(sigma(1e-3), 0.02)


def test_class_conditional_model_takes_labels():
    net = randomized(EDMPrecond(8, 3, label_dim=4, model_type="DhariwalUNet", **TINY_ADM))
    model = EDMModel(net, (3, 8, 8), label_dim=4)
    x, t = torch.randn(3, 3, 8, 8), torch.tensor(0.4)
    labels = model.default_cond(torch.tensor([5, 6, 7]))
    assert labels.tolist() == [1, 2, 3]
    with torch.no_grad():
        by_index = model.data_prediction(x, t, labels)
        one_hot = torch.nn.functional.one_hot(labels, 4).float()
        torch.testing.assert_close(model.data_prediction(x, t, {"class_labels": one_hot}), by_index)
        assert not torch.allclose(model.data_prediction(x, t, labels.flip(0)), by_index)
    with pytest.raises(ConfigError, match="needs cond"):
        model.data_prediction(x, t)
    with pytest.raises(ConfigError, match=r"in \[0, 4\)"):
        model.data_prediction(x, t, torch.tensor([0, 1, 4]))
    assert model.identity()["label_dim"] == 4


# -- (d) convert-edm, then teacher → train → sample from the CLI ------------------------------------
def test_convert_edm_command(tmp_path, tiny_vp):
    pkl = write_edm_pickle(tmp_path / "edm-tiny-vp.pkl", tiny_vp, tmp_path / "executed")
    result = subprocess.run(
        [sys.executable, "-m", "gas_solver.cli", "convert-edm", "--pkl", str(pkl), "--out", "conv"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "VPPrecond/SongUNet" in result.stdout and not (tmp_path / "executed").exists()
    meta = json.loads((tmp_path / "conv" / "edm.json").read_text())
    assert meta["precond"] == "VPPrecond" and meta["network"] == "SongUNet"
    assert meta["precond_params"] == {"beta_d": 19.9, "beta_min": 0.1, "M": 1000, "epsilon_t": 1e-5}
    assert meta["converted_from"] == "edm-tiny-vp.pkl"

    from_folder, from_pkl = load_model(str(tmp_path / "conv")), load_model(str(pkl))
    assert from_folder.identity() == from_pkl.identity()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor(0.3)
    torch.testing.assert_close(
        from_folder.noise_prediction(x, t), from_pkl.noise_prediction(x, t), rtol=0, atol=0
    )


def test_convert_edm_names_a_missing_pickle(tmp_path, capsys):
    assert main(["convert-edm", "--pkl", str(tmp_path / "edm-cifar.pkl"), "--out", "c"]) == 2
    err = capsys.readouterr().err
    assert "edm-cifar.pkl not found" in err and "nvlabs-fi-cdn" in err and "Traceback" not in err


def test_weights_that_do_not_fit_are_named(tmp_path, tiny_vp):
    from safetensors.torch import load_file, save_file

    main(["convert-edm", "--pkl", str(write_edm_pickle(tmp_path / "e.pkl", tiny_vp, tmp_path / "m")),
          "--out", str(tmp_path / "conv")])  # fmt: skip
    weights = load_file(tmp_path / "conv" / "model.safetensors")
    weights.pop("model.map_layer0.bias")
    save_file(weights, tmp_path / "conv" / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="map_layer0.bias"):
        load_model(str(tmp_path / "conv"))


@pytest.mark.parametrize("train_on", ["folder", "pkl"])
def test_teacher_train_sample_on_an_edm_model(tmp_path, tiny_vp, train_on):
    pkl = write_edm_pickle(tmp_path / "edm-tiny-vp.pkl", tiny_vp, tmp_path / "executed")
    folder = tmp_path / "conv"
    assert main(["convert-edm", "--pkl", str(pkl), "--out", str(folder)]) == 0
    sources = {"folder": str(folder), "pkl": str(pkl)}
    other = sources["pkl" if train_on == "folder" else "folder"]
    teacher, run = tmp_path / "teacher", tmp_path / "run"
    assert main(["teacher", "--model", sources[train_on], "--seeds", "0-5", "--out", str(teacher),
                 "--solver", "unipc:nfe=5", "--device", "cpu"]) == 0  # fmt: skip
    assert main(["train", "--teacher", str(teacher), "--out", str(run), "--nfe", "3",
                 "--iterations", "3", "--batch-size", "2", "--train-size", "4", "--val-size", "2",
                 "--val-every", "0", "--checkpoint-every", "2", "--device", "cpu"]) == 0  # fmt: skip
    saved = json.loads((run / "solver.json").read_text())
    assert saved["nfe"] == 3 and saved["training"]["iteration"] == 3

    # the checkpoint names its model; the same network from the other source is accepted too
    seeds = ["--seeds", "50000-50002", "--device", "cpu"]
    assert main(["sample", "--solver", str(run), "--out", str(tmp_path / "a"), *seeds]) == 0
    assert main(["sample", "--solver", str(run / "solver.safetensors"), "--model", other,
                 "--out", str(tmp_path / "b"), *seeds]) == 0  # fmt: skip
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in "ab")
    assert a.shape == (3, 3, 8, 8) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "executed").exists()


# -- (e) the networks -------------------------------------------------------------------------------
def test_dhariwal_unet_shapes_and_strict_state_dict_round_trip():
    kwargs = {"img_resolution": 8, "in_channels": 3, "out_channels": 3, "label_dim": 5,
              "augment_dim": 9, **TINY_ADM}  # fmt: skip
    net = randomized(DhariwalUNet(**kwargs), seed=1)
    again = DhariwalUNet(**kwargs).eval()
    again.load_state_dict(net.state_dict(), strict=True)
    x, noise = torch.randn(2, 3, 8, 8), torch.randn(2)
    labels = torch.eye(5)[[0, 3]]
    with torch.no_grad():
        out = net(x, noise, labels)
        assert out.shape == (2, 3, 8, 8)
        torch.testing.assert_close(again(x, noise, labels), out, rtol=0, atol=0)
    keys = set(net.state_dict())
    assert {"map_label.weight", "map_augment.weight", "enc.8x8_conv.weight",
            "enc.4x4_down.conv0.resample_filter", "enc.4x4_block0.qkv.weight",
            "dec.4x4_in0.proj.bias", "dec.8x8_up.skip.resample_filter", "out_conv.bias"} <= keys  # fmt: skip
    assert "map_label.bias" not in keys and net.dec["4x4_in0"].num_heads == 2


@pytest.mark.parametrize(
    "variant",
    [
        {},  # DDPM++
        {
            "embedding_type": "fourier",
            "channel_mult_noise": 2,
            "encoder_type": "residual",
            "resample_filter": [1, 3, 3, 1],
        },  # NCSN++  # fmt: skip
        {"encoder_type": "skip", "decoder_type": "skip", "label_dim": 3},
    ],
)
def test_song_unet_variants(variant):
    kwargs = {"img_resolution": 8, "in_channels": 3, "out_channels": 3, "model_channels": 16,
              "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4], **variant}  # fmt: skip
    net = randomized(SongUNet(**kwargs))
    again = SongUNet(**kwargs).eval()
    again.load_state_dict(net.state_dict(), strict=True)
    labels = torch.eye(3)[[0, 2]] if variant.get("label_dim") else None
    x, noise = torch.randn(2, 3, 8, 8), torch.randn(2)
    with torch.no_grad():
        out = net(x, noise, labels)
        assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
        torch.testing.assert_close(again(x, noise, labels), out, rtol=0, atol=0)
    keys = set(net.state_dict())
    assert {"map_layer0.weight", "enc.8x8_conv.weight", "enc.4x4_block0.qkv.weight",
            "dec.8x8_aux_conv.weight"} <= keys  # fmt: skip
    if variant.get("encoder_type") == "residual":
        assert "enc.4x4_aux_residual.weight" in keys and "map_noise.freqs" in keys
