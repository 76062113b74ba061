"""The touch guest: built from ``guest/touch.S`` with binutils into a cache directory, and what it
says on its serial port.

The build is keyed by a digest of the sources, so an edited guest is rebuilt and an unchanged one
is reused across runs::

    as --64 -o touch.o touch.S
    ld -m elf_x86_64 -T link.ld -o touch64.elf touch.o
    objcopy -O elf32-i386 touch64.elf touch.elf
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "GUEST_SOURCES",
    "GuestBuildError",
    "SerialReport",
    "build_guest",
    "default_cache_dir",
    "parse_serial",
]

GUEST_SOURCES: Final = Path(__file__).resolve().parent / "guest"
TOOLS: Final = ("as", "ld", "objcopy")
_LINE: Final = re.compile(r"^(BOOT|CPUS|ONLINE|AVAIL|TOUCHED)(?: (\d+))?$")


class GuestBuildError(RuntimeError):
    """The guest could not be assembled, linked or converted."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/overhead-service/measure`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "overhead-service" / "measure"


def build_guest(cache_dir: Path | None = None) -> Path:
    """The path of ``touch.elf`` (32-bit multiboot ELF), built unless the cache holds this version."""
    sources = [GUEST_SOURCES / "touch.S", GUEST_SOURCES / "link.ld"]
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    target_dir = (cache_dir or default_cache_dir()) / f"guest-{digest.hexdigest()[:16]}"
    target = target_dir / "touch.elf"
    if target.is_file():
        return target
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise GuestBuildError(f"cannot build the guest: {', '.join(missing)} not found (install binutils)")
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir.parent, prefix=".build-") as scratch:
        work = Path(scratch)
        steps = [
            ["as", "--64", "-o", str(work / "touch.o"), str(sources[0])],
            [
                "ld",
                "-m",
                "elf_x86_64",
                "-T",
                str(sources[1]),
                "-o",
                str(work / "touch64.elf"),
                str(work / "touch.o"),
            ],
            ["objcopy", "-O", "elf32-i386", str(work / "touch64.elf"), str(work / "touch.elf")],
        ]
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise GuestBuildError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr.strip()}")
        staged = work / "out"
        staged.mkdir()
        shutil.copy2(work / "touch.elf", staged / "touch.elf")
        try:
            staged.rename(target_dir)  # atomic: another build racing us may win, which is fine
        except OSError:
            if not target.is_file():
                raise
    return target


@dataclass(frozen=True)
class SerialReport:
    """What the guest printed so far (MiB for AVAIL and TOUCHED); ``None`` where not yet printed."""

    booted: bool = False
    cpus: int | None = None
    online: int | None = None
    avail_mib: int | None = None
    touched_mib: int | None = None

    @property
    def done(self) -> bool:
        return self.touched_mib is not None


def parse_serial(text: str) -> SerialReport:
    """Parse the guest's COM1 output; an incomplete last line is ignored."""
    values: dict[str, int | None] = {}
    booted = False
    lines = text.split("\n")
    for line in lines[:-1]:  # the part after the last newline may still be being written
        match = _LINE.match(line.strip("\r"))
        if match is None:
            continue
        key, number = match.groups()
        if key == "BOOT":
            booted = True
        elif number is not None:
            values[key] = int(number)
    return SerialReport(
        booted=booted,
        cpus=values.get("CPUS"),
        online=values.get("ONLINE"),
        avail_mib=values.get("AVAIL"),
        touched_mib=values.get("TOUCHED"),
    )
