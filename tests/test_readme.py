"""The README, walked as a stranger would: every command in its code blocks runs as shown.

Each command runs in its own process, in a clean environment (no ``ANALYZER_*`` variables, a
fresh home folder, no network: ``HF_HUB_OFFLINE=1``), on copies of ``examples/``: ``~/sd-outputs``,
``~/more-images`` and ``/mnt/nas/renders`` are such copies. The walk starts where ``demo.sh``
leaves a new user: the clip and llm extras not installed (their modules are hidden from the
processes), until the README's ``pip install -e '.[clip]'`` and ``'.[llm]'`` lines "install"
them. The ``.env`` block configures the llm plugin, pointed at a loopback server that speaks
OpenAI's wire format. A command fails the walk on a traceback, a Python warning, or an exit
code other than the one the README's rules give.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from analyzer_llm.testing import answer_shipped_templates, fake_provider

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parent.parent
README = PROJECT / "README.md"
EXTRAS = {
    "clip": ("torch", "open_clip", "clip_interrogator", "transformers"),
    "llm": ("openai", "anthropic", "jsonschema"),
    "grid": ("pyvips",),
}
NOT_RUN = {
    "./scripts/demo.sh": "sets up .venv; its analysis (the exec line of demo.sh) is walked instead",
    "./scripts/test.sh": "the test suite itself (this walk is part of it)",
}
SITECUSTOMIZE = """\
import os, sys
for _name in filter(None, os.environ.get("README_WALK_HIDE", "").split(",")):
    sys.modules[_name] = None  # as if not installed: find_spec() is None, import fails
"""


def code_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(language, body) of every fenced block."""
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        yield match.group(1), match.group(2)


def commands(body: str) -> list[str]:
    """The command lines of a shell block, comments and blank lines left out."""
    found = []
    for line in body.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            found.append(shlex.join(words))
    return found


@dataclass
class Walk:
    tmp: Path
    home: Path
    work: Path
    hidden: set[str] = field(default_factory=lambda: {m for mods in EXTRAS.values() for m in mods})
    env: dict[str, str] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ANALYZER_")}
        env.update(
            HOME=str(self.home),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            HF_HUB_OFFLINE="1",
            PYTHONPATH=os.pathsep.join([str(self.tmp / "hide"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            README_WALK_HIDE=",".join(sorted(self.hidden)),
            PYTHONWARNINGS="default",
            COLUMNS="200",
        )
        env.pop("CI", None)
        env.update(self.env)
        return env

    def argv(self, command: str) -> list[str]:
        words = shlex.split(command)
        program, args = words[0], words[1:]
        assert program in ("analyzer", ".venv/bin/analyzer"), f"the walk does not know how to run {command!r}"
        expanded = [str(self.home / a[2:]) if a.startswith("~/") else a for a in args]
        expanded = [str(self.tmp / "renders") if a == "/mnt/nas/renders" else a for a in expanded]
        return [sys.executable, "-m", "analyzer", *expanded]

    def run(self, command: str, code: int = 0, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        self.seen.append(command)
        done = subprocess.run(
            self.argv(command),
            cwd=self.work,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.check(command, done.returncode, done.stderr, code)
        return done

    def watch(self, command: str) -> str:
        """A watcher: started, left until its first walk is done, stopped with SIGINT (exit 0)."""
        self.seen.append(command)
        log = self.tmp / "watch.log"
        with log.open("w") as err:
            process = subprocess.Popen(
                self.argv(command), cwd=self.work, env=self.environment(), stdout=subprocess.DEVNULL, stderr=err
            )
            deadline = time.monotonic() + 60
            while "following changes" not in log.read_text() and process.poll() is None:
                assert time.monotonic() < deadline, f"{command}: no 'following changes' within 60 s"
                time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=60)
        self.check(command, code, log.read_text(), 0)
        return log.read_text()

    def check(self, command: str, code: int, err: str, expected: int) -> None:
        assert "Traceback" not in err, f"{command}: a traceback\n{err}"
        assert not re.search(r"\w+Warning: ", err), f"{command}: a Python warning\n{err}"
        assert code == expected, f"{command}: exit {code}, expected {expected}\n{err}"


@pytest.fixture
def walk(tmp_path: Path) -> Walk:
    examples = PROJECT / "examples"
    home, work = tmp_path / "home", tmp_path / "work"  # the autouse fixture made home (and HOME) already
    for target in (work / "examples", home / "sd-outputs", home / "more-images", tmp_path / "renders"):
        shutil.copytree(examples, target, ignore=shutil.ignore_patterns("*.json", "wildcards", ".analyzer"))
    shutil.copy(examples / "automatic1111_cropped.png", home / "sd-outputs" / "cat.png")
    (home / "sd-outputs" / "2026-11").mkdir()
    shutil.copy(examples / "fooocus1_cropped.png", home / "sd-outputs" / "2026-11" / "new.png")
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return Walk(tmp_path, home, work)


def test_every_command_in_the_readme_runs_as_shown(walk: Walk) -> None:
    blocks = list(code_blocks(README.read_text()))
    shell = [commands(body) for lang, body in blocks if lang == "bash"]
    setup, extras, tour, datasets, grids, collection, watching = shell
    dotenv = next(body for lang, body in blocks if lang == "dotenv")
    api = next(body for lang, body in blocks if lang == "python")

    # The quick start: demo.sh's job, on a copy of examples/.
    assert set(setup) == set(NOT_RUN)
    demo = (PROJECT / "scripts" / "demo.sh").read_text()
    job = re.search(r"^exec (\.venv/bin/analyzer .*?) \"\$@\"$", demo, flags=re.M)
    assert job is not None
    walk.run(job.group(1))
    assert (walk.work / "examples" / "automatic1111_cropped.png.metadata.json").exists()

    # A plugin whose extra is missing: refused before any work, saying what to install.
    missing = walk.run(".venv/bin/analyzer run examples --plugins clip", code=2)
    assert "pip install 'analyzer[clip]'" in missing.stderr

    # Optional extras: the pip lines install them (here: stop hiding them), then each plugin runs.
    for command in extras:
        if command.startswith(".venv/bin/pip install"):
            extra = re.search(r"\[(\w+)\]", command)
            assert extra is not None, command
            walk.hidden -= set(EXTRAS[extra.group(1)])
        elif "--plugins clip" in command:  # no weights on an offline machine: one message, exit 1
            offline = walk.run(command, code=1)
            assert offline.stderr.count("cannot load CLIP model") == 1
            assert "hf download" in offline.stderr
            assert "Retrying in" not in offline.stderr
        elif "--plugins llm" in command:
            with fake_provider() as fake:
                fake.answer = answer_shipped_templates
                env = dotenv.replace("# ANALYZER_LLM__PROVIDER=", "ANALYZER_LLM__PROVIDER=")
                env = env.replace("# ANALYZER_LLM__MODEL=", "ANALYZER_LLM__MODEL=")
                env = re.sub(r"# ANALYZER_LLM__BASE_URL=\S+", f"ANALYZER_LLM__BASE_URL={fake.base_url}/v1", env)
                (walk.work / ".env").write_text(env)
                walk.run(command)
                (walk.work / ".env").unlink()
                assert fake.seen, "the llm plugin sent no request"
        else:
            walk.run(command)
    assert (walk.work / "examples" / "automatic1111_cropped.png.llm.json").exists()

    # The tour, as after demo.sh (no extras: on this offline machine the clip plugin would fail).
    walk.hidden = {m for mods in EXTRAS.values() for m in mods}
    for command in tour:
        if command.startswith("analyzer watch"):
            walk.watch(command)
        else:
            walk.run(command)
    assert "photo of a duck" in walk.run("analyzer show ~/sd-outputs/cat.png metadata.prompt").stdout

    # Datasets, from the metadata the tour stored (no model runs).
    for command in datasets:
        walk.run(command)
    by_sampler = walk.home / "datasets" / "by-sampler"
    assert (by_sampler / "UniPC").is_dir() and (by_sampler / "labels.jsonl").is_file()
    assert (walk.home / "datasets" / "lora.zip").is_file()
    captions = list((walk.home / "datasets" / "lora").glob("10_images/*.txt"))
    assert any(c.read_text() == "mytoken, photo of a duck\n" for c in captions)

    # Contact sheets, from the same stored metadata, with the grid extra installed.
    walk.hidden -= set(EXTRAS["grid"])
    for command in grids:
        walk.run(command)
    walk.hidden |= set(EXTRAS["grid"])
    assert (walk.home / "sheets" / "outputs.png").is_file() and (walk.home / "sheets" / "outputs.webp").is_file()
    assert (walk.home / "sheets" / "steps-by-sampler.png").is_file()

    # The Python API example.
    done = subprocess.run(
        [sys.executable, "-c", api],
        cwd=walk.work,
        env=walk.environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    walk.check("the Python API example", done.returncode, done.stderr, 0)

    # Watching folders.
    for command in watching:
        walk.watch(command)

    # Output into a pipe whose reader is gone (`| head` that has read enough): quiet, exit 141.
    piped = subprocess.run(
        f"{shlex.join(walk.argv('analyzer status ~/sd-outputs'))} | true; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        cwd=walk.work,
        env=walk.environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert piped.stderr == "" and piped.stdout.splitlines()[-1] == "141", piped

    # The classify settings example, as analyzer.toml: its label sets become modes.
    walk.hidden = set()
    classify_toml = next(body for lang, body in blocks if lang == "toml" and "[classify" in body)
    (walk.work / "analyzer.toml").write_text(classify_toml)
    sets = walk.run("analyzer status ~/sd-outputs --plugins classify --json")
    assert {row["mode"] for row in json.loads(sets.stdout)["results"]} == {"animals", "signs"}
    (walk.work / "analyzer.toml").unlink()

    # The whole collection (~/digits: a folder per class): no weights offline, so one message, exit 1.
    for digit in "01":
        ignore = shutil.ignore_patterns("*.json", "wildcards", ".analyzer")
        shutil.copytree(PROJECT / "examples", walk.home / "digits" / digit, ignore=ignore)
    for command in collection:
        offline = walk.run(command, code=1)
        assert offline.stderr.count("cannot load CLIP model") == 1 and "hf download" in offline.stderr

    shown = {
        c for c in [*extras, *tour, *datasets, *grids, *collection, *watching] if not c.startswith(".venv/bin/pip")
    }
    assert shown <= set(walk.seen), shown - set(walk.seen)
