"""Linux CPU list strings (``0-3,8,10-11``, ``0-15:2/4``): parsing with specific errors, and formatting."""

from __future__ import annotations

from collections.abc import Iterable


class CpuListError(ValueError):
    """A CPU list string is malformed; the message names the offending part."""


def _number(text: str, whole: str, last: int | None) -> int:
    text = text.strip()
    if text == "N":
        if last is None:
            raise CpuListError(f"CPU list {whole!r}: 'N' (last CPU) is not allowed here")
        return last
    if not text.isdigit():
        raise CpuListError(f"CPU list {whole!r}: {text!r} is not a CPU number")
    return int(text)


def parse_cpulist(text: str, *, last: int | None = None) -> frozenset[int]:
    """Parse a kernel CPU list (the format of ``/sys/devices/system/cpu/online`` and ``isolcpus=``).

    Accepts single ids, ranges ``a-b`` and strided ranges ``a-b:used/group``; ``N`` stands for
    ``last`` when given. An empty (or whitespace-only) string is the empty set.
    """
    whole = text
    text = text.strip()
    if not text:
        return frozenset()
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise CpuListError(f"CPU list {whole!r}: empty element")
        stride_used, stride_group = 1, 1
        if ":" in part:
            part, _, stride = part.partition(":")
            used_text, slash, group_text = stride.partition("/")
            if not slash:
                raise CpuListError(f"CPU list {whole!r}: stride {stride!r} must be 'used/group'")
            stride_used = _number(used_text, whole, None)
            stride_group = _number(group_text, whole, None)
            if stride_group == 0 or stride_used == 0 or stride_used > stride_group:
                raise CpuListError(f"CPU list {whole!r}: stride {stride!r} is out of range")
        if "-" in part:
            lo_text, _, hi_text = part.partition("-")
            lo, hi = _number(lo_text, whole, last), _number(hi_text, whole, last)
            if hi < lo:
                raise CpuListError(f"CPU list {whole!r}: range {part!r} runs backwards")
        elif stride_group != 1:
            raise CpuListError(f"CPU list {whole!r}: a stride needs a range, got {part!r}")
        else:
            lo = hi = _number(part, whole, last)
        for base in range(lo, hi + 1, stride_group):
            cpus.update(c for c in range(base, min(base + stride_used, hi + 1)))
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """The compact kernel form of a CPU set, e.g. ``{0,1,2,3,8,10,11}`` → ``"0-3,8,10-11"``."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_cpumask(text: str) -> frozenset[int]:
    """Parse a kernel hex CPU mask (``ff``, ``0003``, ``00000000,00000003``: 32-bit words, most
    significant first)."""
    words = text.strip().split(",")
    bits = 0
    for word in words:
        try:
            value = int(word, 16)
        except ValueError:
            raise CpuListError(f"CPU mask {text.strip()!r}: {word!r} is not hexadecimal") from None
        if len(word) > 8:
            raise CpuListError(f"CPU mask {text.strip()!r}: word {word!r} is wider than 32 bits")
        bits = (bits << 32) | value
    return frozenset(i for i in range(bits.bit_length()) if bits >> i & 1)


def format_cpumask(cpus: Iterable[int]) -> str:
    """The kernel hex mask of a CPU set, in comma-separated 32-bit words (``{0,1}`` → ``"3"``)."""
    bits = 0
    for cpu in cpus:
        bits |= 1 << cpu
    digits = f"{bits:x}"
    words: list[str] = []
    while len(digits) > 8:
        words.insert(0, digits[-8:])
        digits = digits[:-8]
    words.insert(0, digits)
    return ",".join(words)
