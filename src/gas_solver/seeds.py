"""Seeds: EDM-style seed lists and per-seed noise (determinism by seed).

Every sample's initial noise comes from its own seed, drawn by its own CPU
:class:`torch.Generator`, so a sample is the same whatever the batch size, the batch it falls in,
the order of the seeds, the number of devices or the device the model runs on.

Teacher seeds and evaluation seeds never overlap; the paper's defaults are
:data:`TEACHER_SEEDS` (0–49999) and :data:`EVAL_SEEDS` (50000–99999).

Note: the official GAS code draws with ``torch.Generator('cuda')``, so its noise (and its
published teacher sets) differ from ours for the same seed; only the protocol is the same.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence, Sized

import torch
from torch import Tensor

from .config import excerpt
from .errors import ConfigError

TEACHER_SEEDS = "0-49999"
EVAL_SEEDS = "50000-99999"

MAX_SEED = 2**63 - 1  # seeds are stored as int64
MAX_SEEDS = 10_000_000
"""Most seeds one list may hold. Text is counted range by range before anything is expanded, so
``0-999999999`` is refused at once instead of building a list of 10**9 ints (tens of GB). The
paper's largest protocol uses 50k seeds; a list of 10**7 ints takes a few hundred MB."""
_MAX_SEED_DIGITS = 19
"""Digits of :data:`MAX_SEED`. Longer numbers are refused before ``int()`` reads them (Python
refuses text of over 4300 digits with a ``ValueError``, and reading it costs time)."""
_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$", re.ASCII)  # ASCII digits only


def parse_seeds(seeds: str | int | Iterable[int]) -> list[int]:
    """A seed list from EDM-style text (``"0-1399,2000,3000-3009"``; ranges are inclusive).

    The order is kept as written. Integers and iterables of integers (lists, ``range``, 1-D
    integer tensors) are accepted too and checked the same way.

    Raises:
        ConfigError: on an empty list, a part that is not ``N`` or ``A-B`` with ``A <= B``, a
            negative or too large seed, a seed listed twice, or more than :data:`MAX_SEEDS`
            seeds (text is checked before it is expanded).
    """
    if isinstance(seeds, str):
        return _expand(_seed_ranges(seeds))
    out = _seed_list(seeds)
    if not out:
        raise ConfigError("seeds: empty seed list (expected e.g. '0-49999' or '0,5,10-19')")
    if len(set(out)) != len(out):
        dup = next(seed for seed, count in Counter(out).items() if count > 1)
        raise ConfigError(f"seeds: seed {dup} is listed more than once")
    return out


def count_seeds(text: str) -> int:
    """How many seeds EDM-style ``text`` lists, checked as :func:`parse_seeds` checks it but
    without expanding its ranges (what a configuration's validation runs)."""
    return sum(stop - start + 1 for start, stop in _seed_ranges(text))


def format_seeds(seeds: Iterable[int]) -> str:
    """The inverse of :func:`parse_seeds`: ascending consecutive runs become ``A-B``.

    ``format_seeds([0, 1, 2, 7, 5, 6]) == "0-2,7,5-6"`` and ``parse_seeds`` gives the list back.
    """
    parts: list[str] = []
    run_start = prev = None
    for seed in seeds:
        seed = int(seed)
        if prev is not None and seed == prev + 1:
            prev = seed
            continue
        if run_start is not None:
            parts.append(_run(run_start, prev))
        run_start = prev = seed
    if run_start is not None:
        parts.append(_run(run_start, prev))
    return ",".join(parts)


def check_disjoint(
    first: Iterable[int], second: Iterable[int], names: tuple[str, str] = ("teacher", "evaluation")
) -> None:
    """Raise :class:`ConfigError` if two seed lists share a seed (e.g. teacher vs evaluation)."""
    common = set(first) & set(second)
    if common:
        raise ConfigError(
            f"{names[0]} and {names[1]} seeds overlap ({len(common)} shared, e.g. "
            f"{min(common)}); use disjoint ranges such as {TEACHER_SEEDS} and {EVAL_SEEDS}"
        )


def seeded_noise(
    seeds: str | Sequence[int] | Tensor,
    shape: int | Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise, one sample per seed: shape ``(len(seeds), *shape)``.

    Sample ``i`` is ``torch.randn(shape, generator=torch.Generator().manual_seed(seeds[i]))``:
    always drawn on the CPU in float32, then cast to ``dtype`` and moved to ``device``. So the
    same seed gives bit-identical noise whatever the batch, its position in it, or the device,
    and a float64 or float16 sample is the float32 one converted.
    """
    seeds = _seed_list(seeds)
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    out = torch.empty((len(seeds), *shape), dtype=torch.float32)
    generator = torch.Generator(device="cpu")
    for i, seed in enumerate(seeds):
        generator.manual_seed(seed)
        out[i] = torch.randn(shape, generator=generator, dtype=torch.float32)
    return out.to(device=device, dtype=dtype)


def _seed_ranges(text: str) -> list[tuple[int, int]]:
    """The inclusive ranges of EDM-style ``text``, each checked, with no seed in two of them
    and at most :data:`MAX_SEEDS` seeds in all; nothing is expanded."""
    if not text.strip():
        raise ConfigError("seeds: empty seed list (expected e.g. '0-49999' or '0,5,10-19')")
    ranges = []
    for part in text.split(","):
        match = _PART.match(part)
        if match is None:
            raise ConfigError(
                f"seeds: cannot read {excerpt(part.strip())} in {excerpt(text)}; expected "
                "comma-separated non-negative integers or inclusive ranges like '0-49999'"
            )
        start, stop = (_seed_text(match.group(1)), _seed_text(match.group(2) or match.group(1)))
        if stop < start:
            raise ConfigError(f"seeds: range {excerpt(part.strip())} goes downwards (start > end)")
        ranges.append((start, stop))
    _check_count(sum(stop - start + 1 for start, stop in ranges))
    ordered = sorted(ranges)
    for (_, stop), (start, _) in zip(ordered, ordered[1:], strict=False):
        if start <= stop:
            raise ConfigError(f"seeds: seed {start} is listed more than once")
    return ranges


def _check_count(count: int) -> None:
    if count > MAX_SEEDS:
        raise ConfigError(f"seeds: {count} seeds, more than the {MAX_SEEDS:,} one list may hold")


def _seed_text(digits: str) -> int:
    """ASCII ``digits`` as a checked seed; the length is checked before ``int()`` runs."""
    digits = digits.lstrip("0") or "0"  # Python's limit counts leading zeros too
    if len(digits) > _MAX_SEED_DIGITS:
        raise ConfigError(f"seeds: {excerpt(digits, 40)} is out of range (0 to 2**63 - 1)")
    return _check_range(int(digits))


def _expand(ranges: list[tuple[int, int]]) -> list[int]:
    """The seeds of checked ``ranges`` (at most :data:`MAX_SEEDS`), in order."""
    try:
        return [seed for start, stop in ranges for seed in range(start, stop + 1)]
    except MemoryError:  # only under a memory limit tighter than MAX_SEEDS allows for
        count = sum(stop - start + 1 for start, stop in ranges)
        raise ConfigError(f"seeds: not enough memory for a list of {count} seeds") from None


def _seed_list(seeds: str | int | Iterable[int]) -> list[int]:
    """Seeds as a list of checked ints (duplicates allowed here; an empty list too, except as
    text)."""
    if isinstance(seeds, str):
        return _expand(_seed_ranges(seeds))
    if isinstance(seeds, Tensor):
        if seeds.dim() > 1 or seeds.is_floating_point() or seeds.is_complex():
            raise ConfigError("seeds: a seed tensor must be 0-D or 1-D with an integer dtype")
        seeds = seeds.tolist()
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if isinstance(seeds, Sized):  # a range(10**12), say: refused before it is iterated
        _check_count(len(seeds))
    try:
        return [_check_range(_as_seed(s)) for s in seeds]
    except TypeError as err:
        raise ConfigError(
            f"seeds: expected text, an int or integers, got {excerpt(seeds)}"
        ) from err


def _as_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"not an integer seed: {seed!r}")
    return int(seed)


def _check_range(seed: int) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seeds: {excerpt(seed, 40)} is out of range (0 to 2**63 - 1)")
    return seed


def _run(start: int, stop: int) -> str:
    return str(start) if start == stop else f"{start}-{stop}"
