"""Sizes in bytes: one grammar for every setting that is an amount of memory.

A size is a whole number of bytes (``1048576``, never ``bool``), or a string: a bare whole
number (``"1048576"``), or a number (a fraction allowed) and a unit, spaces between them
allowed: ``"512MiB"``, ``"2GiB"``, ``"1.5 GB"``, ``"64k"``. Binary units (``KiB``,
``MiB``, ``GiB``, ``TiB``) count powers of 1024, decimal ones (``kB``/``KB``, ``MB``,
``GB``, ``TB``) powers of 1000; the one-letter forms (``K``, ``M``, ``G``, ``T``, any
case) are binary, as in ``ulimit`` and Kubernetes' ``Mi``/``Gi`` (also accepted). Case
does not matter except that ``B`` alone means bytes. A fraction of a byte rounds down.

Zero, negative values and anything else raise :class:`~stalwart.errors.ConfigError`
naming the setting.

>>> parse_bytes("2GiB", "STALWART_MODEL_MEMORY")
2147483648
>>> parse_bytes("1.5 MB", "limit"), parse_bytes(4096, "limit")
(1500000, 4096)
>>> format_bytes(5 * 1024 * 1024 + 300_000)
'5.3 MiB'
"""

from __future__ import annotations

import math
import re

from stalwart.errors import ConfigError

__all__ = ["format_bytes", "parse_bytes"]

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "ki": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mi": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gi": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "ti": 1024**4, "tb": 1000**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
# Beyond any machine's memory, and within int64 (the table stores BIGINT).
_MAX = 2**62


def parse_bytes(value: object, setting: str) -> int:
    """``value`` as a positive whole number of bytes (see the module docstring)."""
    hint = "give bytes (1073741824) or a number and a unit (512MiB, 2GiB, 1.5GB)"
    if isinstance(value, bool):
        raise ConfigError(f"{setting}: {value!r} is not a size; {hint}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value)) is not None:
        unit = _UNITS.get(match.group(2).lower())
        if unit is None:
            raise ConfigError(f"{setting}: unknown unit {match.group(2)[:16]!r} in {value[:64]!r}; {hint}")
        number = int(float(match.group(1)) * unit) if "." in match.group(1) else int(match.group(1)) * unit
    else:
        raise ConfigError(f"{setting}: {str(value)[:64]!r} is not a size; {hint}")
    if number <= 0:
        raise ConfigError(f"{setting}: a size must be more than 0 bytes, not {number}")
    if number > _MAX:
        raise ConfigError(f"{setting}: {number} bytes is more than any machine has; {hint}")
    return number


def format_bytes(size: int | None) -> str:
    """A size for people: ``'512 B'``, ``'4.2 MiB'``, ``'2.0 GiB'`` (``'-'`` for None)."""
    if size is None:
        return "-"
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024:
            return f"{size} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"
