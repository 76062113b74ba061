"""For the image and deploy tests: just enough of a Dockerfile parser (there is no docker here to
build the image), and the packaged gunicorn settings as gunicorn loads them.

The parser handles what the project's Dockerfiles use: ``\\`` continuations, comment lines (also inside a
continued instruction), ``ARG`` defaults in ``FROM``, ``ENV k=v ...`` with ``$VAR`` references to
earlier values, and the JSON (exec) form of ``ENTRYPOINT``, ``CMD`` and ``VOLUME``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Instruction",
    "Stage",
    "dockerignore_excludes",
    "gunicorn_settings",
    "parse",
    "read_ignore",
    "stages",
]


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str
    line: int


@dataclass
class Stage:
    """One ``FROM`` and what follows it."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self, inherited: dict[str, str] | None = None) -> dict[str, str]:
        """The environment the stage sets (``$NAME`` and ``${NAME}`` refer to earlier values)."""
        values = dict(inherited or {})
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.arguments):
                name, equals, value = word.partition("=")
                if not equals:
                    raise ValueError(f"line {instruction.line}: only the ENV name=value form is supported")
                values[name] = re.sub(
                    r"\$\{?(\w+)\}?", lambda match: values.get(match.group(1), match.group(0)), value
                )
        return values

    def exec_form(self, keyword: str) -> list[str] | None:
        """The JSON array of the last ``keyword`` instruction (``ENTRYPOINT``, ``CMD``, ``VOLUME``)."""
        instruction = self.last(keyword)
        if instruction is None:
            return None
        value = json.loads(instruction.arguments)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"line {instruction.line}: {keyword} must be a JSON array of strings")
        return value


def parse(text: str) -> list[Instruction]:
    """The instructions, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continued instruction, as docker does
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, arguments = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    if pending:
        raise ValueError(f"line {start}: the last instruction ends with a continuation")
    return instructions


def stages(text: str) -> list[Stage]:
    """The build stages, in order (the last one is the image)."""
    args: dict[str, str] = {}
    result: list[Stage] = []
    for instruction in parse(text):
        if instruction.keyword == "ARG" and not result:
            name, _, default = instruction.arguments.partition("=")
            args[name] = default
        elif instruction.keyword == "FROM":
            words = instruction.arguments.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda match: args.get(match.group(1)) or "", words[0])
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(base=base, name=stage))
        elif result:
            result[-1].instructions.append(instruction)
    return result


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether a ``.dockerignore`` with ``patterns`` leaves ``path`` (relative, with ``/``) out of
    the build context: a pattern matches the path or one of its parents; ``**`` spans directories;
    a later ``!pattern`` puts a path back."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        if any(_glob_match(glob, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def _glob_match(glob: str, path: str) -> bool:
    if glob.startswith("**/"):
        rest = glob[3:]
        pieces = path.split("/")
        return any(fnmatch.fnmatchcase("/".join(pieces[i:]), rest) for i in range(len(pieces)))
    # fnmatch's * crosses "/", docker's does not: compare segment by segment.
    globs, pieces = glob.split("/"), path.split("/")
    return len(globs) == len(pieces) and all(
        fnmatch.fnmatchcase(p, g) for p, g in zip(pieces, globs, strict=True)
    )


def read_ignore(path: Path) -> list[str]:
    """The patterns of a ``.dockerignore`` file."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


_SETTINGS_SCRIPT = """
import json, sys
from overhead_service import gunicorn_conf as conf
names = sys.argv[1:]
print(json.dumps({name: getattr(conf, name, None) for name in names}))
"""


def gunicorn_settings(*names: str) -> dict[str, Any]:
    """Settings of ``overhead_service.gunicorn_conf`` as a fresh process sees them. Not imported
    here: the module refuses to load once this process has imported prometheus_client without a
    multiprocess directory, and it prepares that directory as it loads."""
    with tempfile.TemporaryDirectory(prefix="gunicorn-conf-") as metrics:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OVERHEAD_")}
        env.update(PROMETHEUS_MULTIPROC_DIR=metrics, WEB_CONCURRENCY="2")
        done = subprocess.run(
            [sys.executable, "-c", _SETTINGS_SCRIPT, *names],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    settings: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return settings
