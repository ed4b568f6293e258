"""The example project: it loads (Python and YAML pipelines), `dg` and `dagster` accept it, and the
README's demo materializes everything offline, then reruns from cache at $0 with 0 requests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from dagster_gptimage import GPTImageResource, ImageStore, PromptTable

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example_project"
DATA = EXAMPLE / "src" / "example_project" / "data"
BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")

IMAGE_ASSETS = {
    "product_shots",
    "product_shots_lifestyle",
    "new_arrivals",
    "posters",
    "posters_vintage",
    "posters_framed",
}
DATASET_ASSETS = {"image_manifest", "image_dataset", "image_gallery"}
PROMPT_ASSETS = {"product_shots_prompts", "new_arrivals_prompts", "posters_prompts"}


def expected_images() -> int:
    """Generation + one edit per product, the new arrivals, posters + two edit steps."""
    products = len(PromptTable.from_path(DATA / "products.csv"))
    arrivals = len(PromptTable.from_path(DATA / "arrivals.csv"))
    posters = len(PromptTable.from_path(DATA / "posters.yaml"))
    return 2 * products + arrivals + 3 * posters


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("GPTIMAGE_PROVIDER", raising=False)
    monkeypatch.setenv("GPTIMAGE_STORE_URL", str(tmp_path / "store"))
    return tmp_path / "store"


def home(tmp_path: Path) -> Path:
    folder = tmp_path / "dagster_home"
    folder.mkdir(exist_ok=True)
    (folder / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return folder


def offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "GPTIMAGE_PROVIDER")}
    env.update(
        DAGSTER_HOME=str(home(tmp_path)),
        GPTIMAGE_STORE_URL=str(tmp_path / "store"),
        GPTIMAGE_EMULATOR_LATENCY_SCALE="0",
        NO_COLOR="1",
    )
    return env


def gallery_data(page: str) -> dict:
    """The data the gallery page inlines once."""
    found = re.search(
        r'<script type="application/json" id="gallery-data">(.*?)</script>', page, re.S
    )
    assert found, "the gallery page holds no data"
    return json.loads(found.group(1))


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    completed.stdout = ANSI.sub("", completed.stdout)
    completed.stderr = ANSI.sub("", completed.stderr)
    return completed


def test_definitions_hold_both_pipelines(offline: Path) -> None:
    from example_project.definitions import defs as load_defs

    defs = load_defs()
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == IMAGE_ASSETS | DATASET_ASSETS | PROMPT_ASSETS
    assert [sensor.name for sensor in defs.sensors or []] == ["new_arrivals_prompt_table_sensor"]

    framed = graph.get(dg.AssetKey("posters_framed"))
    assert framed.parent_keys == {dg.AssetKey("posters_vintage")}
    assert framed.automation_condition is not None
    assert graph.get(dg.AssetKey("posters")).partitions_def.get_partition_keys() == [
        "lisbon",
        "kyoto",
        "reykjavik",
        "marrakesh",
    ]
    manifest = graph.get(dg.AssetKey("image_manifest"))
    assert {key.to_user_string() for key in manifest.parent_keys} == IMAGE_ASSETS
    assert len(graph.get(dg.AssetKey("product_shots")).partitions_def.get_partition_keys()) == 12

    resources = defs.resources or {}
    assert isinstance(resources["gptimage"], GPTImageResource)
    assert resources["gptimage"].provider == "emulator"
    assert isinstance(resources["image_store"], ImageStore)
    assert resources["image_store"].resolved_base_url == str(offline)


def test_the_real_api_is_used_only_when_asked_for(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: a key exported in the shell is not enough to spend money."""
    from example_project import resources

    assert resources.gptimage_resource().provider == "emulator"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    assert resources.gptimage_resource().provider == "emulator"
    monkeypatch.setenv("GPTIMAGE_PROVIDER", "openai")
    online = resources.gptimage_resource()
    assert online.provider == "openai"
    assert isinstance(online.api_key, dg.EnvVar)
    assert "sk-test" not in repr(online)
    monkeypatch.setenv("GPTIMAGE_PROVIDER", "emulator")
    assert resources.gptimage_resource().provider == "emulator"
    monkeypatch.setenv("GPTIMAGE_PROVIDER", "dall-e")
    with pytest.raises(ValueError, match="GPTIMAGE_PROVIDER='dall-e'"):
        resources.gptimage_resource()
    monkeypatch.setenv("GPTIMAGE_PROVIDER", "openai")
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ValueError, match="needs OPENAI_API_KEY"):
        resources.gptimage_resource()


def test_real_mode_prints_the_preflight_estimate(offline: Path) -> None:
    from example_project.definitions import defs as load_defs
    from example_project.demo import preflight_line

    line = preflight_line(load_defs())
    found = re.search(r"Pre-flight estimate: (\d+) images, at most \$([0-9.]+)", line)
    assert found, line
    assert int(found.group(1)) == expected_images()
    assert float(found.group(2)) > 0


def test_make_demo_stays_offline_with_a_key_in_the_shell() -> None:
    """`make demo` pins the emulator unless REAL=1 is given (checked with make's dry run)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"}
    dry = subprocess.run(
        ["make", "-n", "demo"], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert "GPTIMAGE_PROVIDER=emulator" in dry.stdout
    real = subprocess.run(
        ["make", "-n", "demo", "REAL=1"], cwd=root, env=env, capture_output=True, text=True
    )
    assert "GPTIMAGE_PROVIDER=openai" in real.stdout


def test_default_store_is_inside_the_project(monkeypatch: pytest.MonkeyPatch) -> None:
    from example_project import resources

    monkeypatch.delenv("GPTIMAGE_STORE_URL", raising=False)
    assert resources.project_root() == EXAMPLE
    assert resources.store_url() == str(EXAMPLE / "gptimage_store")
    assert "gptimage_store/" in (EXAMPLE / ".gitignore").read_text().splitlines()


@pytest.mark.slow
def test_workspace_yaml_validates(tmp_path: Path) -> None:
    completed = run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        REPO,
        offline_env(tmp_path),
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "Validation successful for code location example_project" in output
    assert "using the offline emulator" in output


@pytest.mark.slow
def test_dg_check_defs_and_list_defs(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    checked = run([str(BIN / "dg"), "check", "defs", "--use-active-venv"], EXAMPLE, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All component YAML validated successfully." in checked.stdout
    assert "All definitions loaded successfully." in checked.stdout

    listed = run([str(BIN / "dg"), "list", "defs", "--json"], EXAMPLE, env)
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    assets = {asset["asset_key"]: asset for asset in listing["assets"]}
    assert set(assets) == IMAGE_ASSETS | DATASET_ASSETS | PROMPT_ASSETS
    assert assets["posters_vintage"]["dependency_keys"] == ["posters"]
    assert {"openai", "image"} <= set(assets["posters"]["kinds"])
    sensors = {s["name"] for s in listing["sensors"]}
    assert "new_arrivals_prompt_table_sensor" in sensors
    assert "default_automation_condition_sensor" in sensors


@pytest.mark.slow
def test_demo_materializes_everything_then_reruns_from_cache(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    (tmp_path / "dagster_home" / "dagster.yaml").unlink()
    demo = [sys.executable, "-m", "example_project.demo"]
    images = expected_images()

    first = run(demo, tmp_path, env)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "provider emulator" in out
    assert re.search(rf"Total: {images} images, 0 cached, {images} requests, \$0\.\d{{4}}", out)
    store = tmp_path / "store"
    for name in IMAGE_ASSETS:
        row = re.search(rf"^{name}\s+(\d+)\s+0\s+(\d+)\s+\$(\S+)\s+(\S+ s)\s+(\S+)$", out, re.M)
        assert row, f"no table row for {name}:\n{out}"
        assert int(row.group(1)) == int(row.group(2)) > 0
        assert float(row.group(3)) > 0
        assert row.group(5) == str(store / name)
        assert len(list((store / name).glob("*.json"))) == int(row.group(1))
    assert (store / "image_manifest" / "manifest.parquet").is_file()
    assert (store / "image_dataset" / "train" / "metadata.jsonl").is_file()
    page = store / "image_gallery" / "index.html"
    assert f"Gallery (open it in a browser to review every image): {page}" in out
    data = gallery_data(page.read_text(encoding="utf-8"))
    assert data["totals"]["images"] == len(data["items"]) == images
    assert {asset["key"] for asset in data["assets"]} == IMAGE_ASSETS
    thumbnails = {item[data["fields"].index("sha256")] for item in data["items"]}
    assert {p.stem for p in (store / "image_gallery" / "thumbs").iterdir()} == thumbnails
    assert (
        "telemetry:\n  enabled: false" in (tmp_path / "dagster_home" / "dagster.yaml").read_text()
    )

    second = run(demo, tmp_path, env)
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout
    assert f"Total: {images} images, {images} cached, 0 requests, $0.0000" in out
    assert "Everything was cached: 0 requests, $0.00" in out
    assert f"Gallery (open it in a browser to review every image): {page}" in out

    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        runs = instance.get_runs()
        assert len(runs) == 8
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert len(instance.get_dynamic_partitions("gptimage__new_arrivals")) == 3
