"""Every code block in ``docs/`` runs, so the docs cannot rot.

Conventions (documented for writers in ``docs/index.md``, "Writing docs"):

- A fenced block must name its language. ``python`` blocks run in order, one namespace per page;
  ``bash``/``sh``/``shell`` blocks run with bash; ``yaml`` blocks that declare a
  ``dagster_gptimage`` component are loaded with it (``defs.yaml``), other ``yaml`` and ``json``
  blocks must parse; ``text``, ``console``, ``csv`` … are shown, not run.
- Everything runs offline against the emulator: in a fresh working directory per page, with
  ``DAGSTER_HOME`` inside it and ``OPENAI_API_KEY`` (and the other provider keys) unset.
- An HTML comment on the line before a block changes what happens to it:
  ``<!-- docs-test: skip REASON -->`` (a reason is required), ``<!-- docs-test: file PATH -->``
  (write the block to PATH in the page's working directory, and beside any ``defs.yaml`` loaded
  later), ``<!-- docs-test: background port=N -->`` (a bash block that serves on port N until the
  page is done; N is replaced by a free port in the page's later blocks) and
  ``<!-- docs-test: dagster.yaml -->`` (a Dagster instance configuration, loaded by a
  ``DagsterInstance``).

Test ids are ``page.md:line`` of the opening fence.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import dagster_gptimage

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"
VENV_BIN = Path(sys.executable).parent

RUN_LANGS = {"python", "bash", "sh", "shell", "yaml", "yml", "json"}
SHOWN_LANGS = {"text", "console", "csv", "jsonl", "toml", "ini", "diff", "markdown", "mermaid"}
DIRECTIVES = {"skip", "file", "background", "dagster.yaml"}
PROVIDER_ENV = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "LUMENFALL_API_KEY", "GPTIMAGE_PROVIDER")

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<name>\S+)\s*(?P<arg>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    directive: str | None = None
    arg: str = ""
    shown_only: bool = False

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"

    @property
    def runs(self) -> bool:
        if self.directive == "skip" or self.shown_only:
            return False
        return self.lang in RUN_LANGS or self.directive in ("file", "dagster.yaml")


def parse_blocks(page: Path) -> list[Block]:
    """Fenced code blocks of a Markdown page, with the directive on the line before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not (
            lines[index].strip().startswith(fence[0] * len(fence))
            and set(lines[index].strip()) == {fence[0]}
        ):
            text = lines[index]
            body.append(text[indent:] if text[:indent].strip() == "" else text.lstrip())
            index += 1
        index += 1
        previous = start - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        directive = _DIRECTIVE.match(lines[previous]) if previous >= 0 else None
        info = match["info"].lower().split()
        blocks.append(
            Block(
                page=page,
                line=start + 1,
                lang=info[0] if info else "",
                shown_only="signature" in info[1:],
                code="\n".join(body) + "\n",
                directive=directive["name"] if directive else None,
                arg=directive["arg"] if directive else "",
            )
        )
    return blocks


PAGES = sorted(DOCS.glob("*.md"))
BLOCKS = [block for page in PAGES for block in parse_blocks(page)]
RUNNABLE = [block for block in BLOCKS if block.runs]
SLOW_PAGES = {
    block.page
    for block in RUNNABLE
    if block.lang in ("bash", "sh", "shell") and block.directive != "file"
}
"""Pages running subprocesses (the dagster CLI, servers): slow as a whole, since their later
blocks depend on the earlier ones."""
PARAMS = [
    pytest.param(block, id=block.id, marks=[pytest.mark.slow] if block.page in SLOW_PAGES else [])
    for block in RUNNABLE
]


# --- per-page state ----------------------------------------------------------------------------


@dataclass
class PageRun:
    """What the blocks of one page share: a working directory, a namespace, servers."""

    page: Path
    workdir: Path
    namespace: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    ports: dict[str, str] = field(default_factory=dict)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    failed: str | None = None
    saved_environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def home(self) -> Path:
        return self.workdir / "dagster_home"

    def substitute(self, code: str) -> str:
        for documented, actual in self.ports.items():
            code = re.sub(rf"(?<!\d){documented}(?!\d)", actual, code)
        return code

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in PROVIDER_ENV}
        env["DAGSTER_HOME"] = str(self.home)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["DAGSTER_DISABLE_TELEMETRY"] = "1"
        env.pop("PYTEST_CURRENT_TEST", None)
        return env

    def close(self) -> None:
        """Stop the page's servers and undo its changes to ``os.environ`` (a page may set, say,
        fake S3 credentials for a local server)."""
        for server in self.servers:
            _stop_group(server)
        self.servers.clear()
        os.environ.clear()
        os.environ.update(self.saved_environ)


_RUNS: dict[Path, PageRun] = {}


def _clear_emulators() -> None:
    """Docs use the process-wide emulators (``get_emulator()``); other tests in this worker must
    not inherit their counters or fault settings."""
    from dagster_gptimage.emulator import _core

    with _core._REGISTRY_LOCK:
        _core._REGISTRY.clear()


@pytest.fixture(scope="module", autouse=True)
def _page_runs() -> Iterator[None]:
    yield
    for run in _RUNS.values():
        run.close()
    _RUNS.clear()
    _clear_emulators()


@pytest.fixture
def page_run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> PageRun:
    block: Block = request.node.callspec.params["block"]
    run = _RUNS.get(block.page)
    if run is None:
        for other in _RUNS.values():
            other.close()
        _clear_emulators()
        workdir = tmp_path_factory.mktemp(block.page.stem)
        run = _RUNS[block.page] = PageRun(page=block.page, workdir=workdir)
        run.home.mkdir()
        (run.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(run.home))
    monkeypatch.setenv("DAGSTER_DISABLE_TELEMETRY", "1")
    monkeypatch.chdir(run.workdir)
    return run


# --- running blocks ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _run_python(block: Block, run: PageRun) -> None:
    source = "\n" * (block.line) + run.substitute(block.code)
    code = compile(source, str(block.page.relative_to(REPO_ROOT)), "exec")
    run.namespace.setdefault("__name__", f"docs_{block.page.stem.replace('-', '_')}")
    exec(code, run.namespace)


def _run_bash(block: Block, run: PageRun) -> None:
    completed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", run.substitute(block.code)],
        cwd=run.workdir,
        env=run.env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if completed.returncode != 0:
        pytest.fail(
            f"{block.id}: exit status {completed.returncode}\n--- stdout\n{completed.stdout[-4000:]}"
            f"\n--- stderr\n{completed.stderr[-4000:]}",
            pytrace=False,
        )


def _start_background(block: Block, run: PageRun) -> None:
    match = re.fullmatch(r"port=(\d+)", block.arg)
    assert match, f"{block.id}: write <!-- docs-test: background port=N -->"
    documented = match[1]
    run.ports[documented] = str(_free_port())
    log = run.workdir / f"background-{block.line}.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["bash", "-c", run.substitute(block.code)],
            cwd=run.workdir,
            env=run.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run.servers.append(server)
    deadline = time.monotonic() + 60
    port = int(run.ports[documented])
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"{block.id}: exited with {server.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    pytest.fail(f"{block.id}: nothing listening on port {port} after 60 s:\n{log.read_text()}")


def _write_file(block: Block, run: PageRun) -> None:
    relative = Path(block.arg)
    assert block.arg, f"{block.id}: write <!-- docs-test: file PATH -->"
    assert not relative.is_absolute(), f"{block.id}: file paths are relative to the working dir"
    assert ".." not in relative.parts, f"{block.id}: file paths stay in the working dir"
    target = run.workdir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(run.substitute(block.code), encoding="utf-8")
    run.files.append(relative)


def _is_component(document: Any) -> bool:
    return isinstance(document, dict) and "dagster_gptimage" in str(document.get("type", ""))


def _load_component(block: Block, run: PageRun) -> None:
    from dagster.components.testing import create_defs_folder_sandbox

    from dagster_gptimage.component import GPTImageComponent

    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / f"docs_{block.line}"
        folder.mkdir(parents=True)
        for relative in run.files:
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run.workdir / relative, target)
        (folder / "defs.yaml").write_text(run.substitute(block.code), encoding="utf-8")
        with sandbox.load_component_and_build_defs(defs_path=folder) as (component, defs):
            assert isinstance(component, GPTImageComponent), type(component)
            graph = defs.resolve_asset_graph()
            assert list(graph.get_all_asset_keys()), f"{block.id}: the component built no assets"


def _run_yaml(block: Block, run: PageRun) -> None:
    documents = list(yaml.safe_load_all(run.substitute(block.code)))
    assert documents, f"{block.id}: empty YAML block"
    if any(_is_component(document) for document in documents):
        assert len(documents) == 1, f"{block.id}: one component per block"
        _load_component(block, run)


def _load_instance_config(block: Block, run: PageRun) -> None:
    import dagster as dg

    home = run.workdir / f"instance-{block.line}"
    home.mkdir()
    (home / "dagster.yaml").write_text(run.substitute(block.code), encoding="utf-8")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_coordinator is not None


def run_block(block: Block, run: PageRun) -> None:
    if block.directive == "file":
        _write_file(block, run)
    elif block.directive == "background":
        _start_background(block, run)
    elif block.directive == "dagster.yaml":
        _load_instance_config(block, run)
    elif block.lang == "python":
        _run_python(block, run)
    elif block.lang in ("bash", "sh", "shell"):
        _run_bash(block, run)
    elif block.lang in ("yaml", "yml"):
        _run_yaml(block, run)
    elif block.lang == "json":
        json.loads(block.code)
    else:  # pragma: no cover - guarded by test_every_block_has_a_known_language
        raise AssertionError(f"{block.id}: nothing runs {block.lang!r} blocks")


@pytest.mark.parametrize("block", PARAMS)
def test_doc_block_runs(block: Block, page_run: PageRun) -> None:
    if page_run.failed:
        pytest.fail(f"not run: {page_run.failed} of this page failed first", pytrace=False)
    try:
        run_block(block, page_run)
    except BaseException:
        page_run.failed = block.id
        raise


# --- the conventions themselves ------------------------------------------------------------------


def test_docs_exist_and_have_runnable_blocks() -> None:
    names = {page.name for page in PAGES}
    expected = {
        "index.md",
        "quickstart.md",
        "concepts.md",
        "providers.md",
        "metadata.md",
        "reliability.md",
        "emulator.md",
        "scaling.md",
        "api.md",
    }
    assert expected <= names, f"missing pages: {sorted(expected - names)}"
    assert len(RUNNABLE) >= 30


def test_every_block_has_a_known_language() -> None:
    unknown = [
        f"{block.id}: {block.lang or '(none)'}"
        for block in BLOCKS
        if block.lang not in RUN_LANGS | SHOWN_LANGS
    ]
    assert not unknown, f"name a language ({sorted(RUN_LANGS | SHOWN_LANGS)}): {unknown}"


def test_every_directive_is_known_and_every_skip_has_a_reason() -> None:
    problems = []
    for block in BLOCKS:
        if block.directive is None:
            continue
        if block.directive not in DIRECTIVES:
            problems.append(f"{block.id}: unknown directive {block.directive!r}")
        if block.directive == "skip" and len(block.arg.strip()) < 10:
            problems.append(f"{block.id}: a skip needs a reason, got {block.arg!r}")
    assert not problems, problems


def test_every_page_mentions_no_stray_directive() -> None:
    """A directive not directly above a block (a typo, a blank comment) would silently do nothing."""
    attached = {(block.page, block.line) for block in BLOCKS if block.directive}
    stray = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, text in enumerate(lines, 1):
            if "docs-test:" not in text or not _DIRECTIVE.match(text):
                continue
            following = number
            while following < len(lines) and not lines[following].strip():
                following += 1
            if (page, following + 1) not in attached:
                stray.append(f"{page.name}:{number}")
    assert not stray, f"directives not followed by a code block: {stray}"


_LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for match in _LINK.finditer(text):
            target = match["target"].split("#", 1)[0]
            if not target or "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.name}: {match['target']}")
    assert not broken, broken


def test_index_links_every_page() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    missing = [page.name for page in PAGES if page.name != "index.md" and page.name not in index]
    assert not missing, f"docs/index.md does not link {missing}"


def test_api_reference_documents_every_export() -> None:
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = [name for name in dagster_gptimage.__all__ if f"### `{name}`" not in api]
    assert not missing, (
        f"docs/api.md lacks {missing}: regenerate it with `python scripts/gen_api_docs.py`"
    )


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11),
    reason="docs/api.md is generated with Python 3.11; other versions print some types differently",
)
def test_api_reference_is_current() -> None:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import gen_api_docs
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    current = (DOCS / "api.md").read_text(encoding="utf-8")
    assert current == gen_api_docs.render(), (
        "docs/api.md is out of date with the docstrings: run `python scripts/gen_api_docs.py`"
    )


def test_metadata_page_lists_every_partition_metadata_key() -> None:
    from dagster_gptimage._metadata import RESERVED_METADATA_KEYS

    page = (DOCS / "metadata.md").read_text(encoding="utf-8")
    missing = sorted(key for key in RESERVED_METADATA_KEYS if f"`{key}`" not in page)
    assert not missing, f"docs/metadata.md does not explain {missing}"


def test_emulator_page_documents_every_setting_and_fault() -> None:
    from dagster_gptimage.emulator import FAULT_KINDS, EmulatorConfig

    page = (DOCS / "emulator.md").read_text(encoding="utf-8")
    missing = [name for name in EmulatorConfig.model_fields if f"| `{name}` |" not in page]
    missing += [kind for kind in FAULT_KINDS if f"`{kind}`" not in page]
    assert not missing, f"docs/emulator.md does not explain {missing}"
