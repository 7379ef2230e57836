"""A newcomer's first steps work as written: the README's Python code runs
after the README's own install command, every install line installs this
project (not PyPI's unrelated ``diskhash``), and the reference pages
(docs/reference/) name every public name of ``diskhash``, ``diskhash.aio``,
``diskhash.dask`` and ``diskhash.errors``.  The code is read out of the Markdown, so it cannot drift.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.packaging import DIST, ROOT, copy_source
from helpers.processes import subprocess_env

README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def code_blocks(path: Path, language: str) -> list[str]:
    if not path.exists():
        pytest.skip(f"not a source checkout: no {path.name}")
    return [body for lang, body in FENCE.findall(path.read_text(encoding="utf-8")) if lang == language]


def run_readme_blocks(python: str, cwd: Path, env: dict[str, str]) -> list[str]:
    """Run each python block of the README in turn, in one directory; their outputs."""
    outputs = []
    for block in code_blocks(README, "python"):
        r = subprocess.run([python, "-c", block], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, f"README block failed:\n{block}\n{r.stdout}{r.stderr}"
        outputs.append(r.stdout)
    return outputs


def check_outputs(outputs: list[str]) -> None:
    assert len(outputs) == 2, outputs
    assert outputs[1] == "b'payload bytes'\n", outputs     # the async block's print


def test_readme_python_blocks_run(tmp_path):
    check_outputs(run_readme_blocks(sys.executable, tmp_path, subprocess_env()))
    assert (tmp_path / "data" / "edges.idx").is_file() and (tmp_path / "data" / "edges").is_dir()


def readme_install_args() -> list[str]:
    """The arguments of the first ``pip install`` the README gives (the demo command's)."""
    first = code_blocks(README, "sh")[0]
    step = next(s for s in first.split("&&") if s.split()[:2] == ["pip", "install"])
    return shlex.split(step)[2:]


def test_readme_first_install_brings_what_the_quick_start_needs():
    # the quick start stores LZ4: the first install must bring the codecs
    assert readme_install_args() == [".[store]"]
    extras = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    store = re.search(r'^store = \[(.*)\]$', extras, re.M)
    assert store is not None and '"lz4' in store.group(1) and '"zstandard' in store.group(1)


@pytest.mark.slow
def test_readme_blocks_run_in_a_fresh_venv_made_by_the_readme_install(tmp_path):
    """Exactly the README's first install command, in a new virtual environment
    (builds the package: minutes), then its Python blocks and a small demo."""
    src = copy_source(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, pip = str(venv / "bin" / "python"), str(venv / "bin" / "pip")
    r = subprocess.run([pip, "install", *readme_install_args()], cwd=src, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    env = {k: v for k, v in subprocess_env().items() if k != "PYTHONPATH"}
    run = tmp_path / "run"
    run.mkdir()
    check_outputs(run_readme_blocks(python, run, env))
    demo = subprocess.run([python, "examples/demo.py", "--entries", "20000", "--payloads", "2000"], cwd=src,
                          capture_output=True, text=True, timeout=300, env=env)
    assert demo.returncode == 0 and "all 2,000 payloads read back exactly" in demo.stdout, demo.stdout + demo.stderr


# ``pip install`` then options, then the first requirement (quoted or not).
INSTALL = re.compile(r"""pip install((?:\s+-[-\w]+)*)\s+("[^"]*"|'[^']*'|[^\s`'"]+)""")


def install_lines() -> list[tuple[str, str]]:
    files = [README, *sorted((ROOT / "docs").glob("**/*.md")), *sorted((ROOT / "examples").glob("*.py")),
             *sorted((ROOT / "diskhash").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]
    found = []
    for path in files:
        for match in INSTALL.finditer(path.read_text(encoding="utf-8")):
            found.append((str(path.relative_to(ROOT)), match.group(2).strip("'\"")))
    return found


def test_every_install_line_installs_this_project():
    lines = install_lines()
    assert len(lines) >= 10, lines
    for where, requirement in lines:
        name = re.match(r"[A-Za-z0-9._-]*", requirement).group(0)
        assert name.lower() != "diskhash", f"{where}: pip install {requirement} installs PyPI's unrelated diskhash"
        if "[" in requirement:        # an extra: only this project has ours
            assert name in (".", DIST), f"{where}: pip install {requirement}"
    readme = [req for where, req in lines if where == "README.md"]
    assert readme and all(req == "." or req.startswith((".[", DIST)) for req in readme), readme


def test_readme_names_the_distribution_and_the_other_diskhash():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^name = "(.*)"$', pyproject, re.M).group(1) == DIST
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert f"`{DIST}`" in text and "luispedro/diskhash" in text and "cannot share an environment" in text


def code_span_text(page: str) -> str:
    path = ROOT / "docs" / "reference" / page
    if not path.exists():
        pytest.skip(f"not a source checkout: no docs/reference/{page}")
    return " ".join(re.findall(r"`([^`\n]+)`", path.read_text(encoding="utf-8")))


def unnamed(names: list[str], page: str) -> list[str]:
    """The names that no code span of the reference page mentions."""
    spans = code_span_text(page)
    return [name for name in names if not re.search(rf"\b{re.escape(name)}\b", spans)]


def test_api_md_names_every_public_name():
    import diskhash

    assert unnamed(diskhash.__all__, "api.md") == []


def test_reference_pages_name_every_public_name_of_their_module():
    import diskhash.aio
    import diskhash.errors

    assert unnamed(diskhash.aio.__all__, "aio.md") == []
    assert unnamed(diskhash.errors.__all__, "errors.md") == []
    # the async twins importable from diskhash are documented with diskhash.aio
    assert unnamed([n for n in diskhash.__all__ if n.startswith("Async")], "aio.md") == []


def test_dask_reference_names_every_public_name():
    dask_module = pytest.importorskip("diskhash.dask")
    assert unnamed(dask_module.__all__, "dask.md") == []


def test_a_missing_name_is_reported():
    # the check above can fail: a name no page mentions is listed
    assert unnamed(["NoSuchPublicName"], "api.md") == ["NoSuchPublicName"]


def test_index_md_lists_the_quick_start_then_the_payload_store():
    text = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    guide = text.split("## Guide", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\((\S+?\.md)\)", guide)
    assert links[:2] == ["guide/quickstart.md", "guide/store.md"], links


def test_readme_and_docs_speak_of_no_tracker():
    """No issue numbers or verdicts against the project's own targets in what users read."""
    pages = [README, *sorted((ROOT / "docs").glob("**/*.md"))]
    found = []
    for path in pages:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\b(PASS|MISS)\b|\bissue \d+|\bitem \d+\b|\(issue|branch `", line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []


def test_quick_start_python_blocks_run(tmp_path):
    """docs/guide/quickstart.md's Python blocks run in turn, as the README's do."""
    blocks = code_blocks(ROOT / "docs" / "guide" / "quickstart.md", "python")
    assert len(blocks) == 3, blocks
    outputs = []
    for block in blocks:
        r = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env=subprocess_env())
        assert r.returncode == 0, f"quick start block failed:\n{block}\n{r.stdout}{r.stderr}"
        outputs.append(r.stdout)
    assert outputs[2] == "b'payload bytes'\n", outputs


def test_every_docs_page_the_code_names_exists():
    """Docstrings, messages and comments send readers to docs pages by path; the
    docs were reorganised once and left 30 such paths pointing at moved pages."""
    named = re.compile(r"docs/[a-z0-9/_-]+\.md")
    stale = []
    for folder in ("diskhash", "benchmarks", "examples", "tests"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in {".py", ".pyx", ".pxd", ".pxi", ".pyi", ".h"}:
                continue
            for m in named.finditer(path.read_text(encoding="utf-8")):
                if not (ROOT / m.group()).is_file():
                    stale.append(f"{path.relative_to(ROOT)}: {m.group()}")
    assert stale == []
