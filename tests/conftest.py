import os
import shutil
from pathlib import Path

import pytest

from fewshot.config import Config

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = os.environ.get("FEWSHOT_DATA", str(REPO.parent / "shared" / "omniglot"))


def running_in_ci() -> bool:
    """CI services set CI (true, 1, yes); .ci/run sets CI=true."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def omniglot_missing() -> str:
    """Why the tests cannot read Omniglot, in a line naming where they looked; "" when they can."""
    if (Path(DATA_ROOT) / "omniglot-py").is_dir():
        return ""
    return (f"Omniglot not found at {DATA_ROOT} (no omniglot-py/ there): the tests read it from $FEWSHOT_DATA, "
            f"else ../shared/omniglot beside the repository")


def pytest_collection_finish(session):
    """In CI, tests that need Omniglot must run: without it the whole run fails at once, before any test."""
    if running_in_ci() and omniglot_missing():
        needing = [item for item in session.items if "data_root" in item.fixturenames]
        if needing:
            pytest.exit(f"CI: {omniglot_missing()}; {len(needing)} of the {len(session.items)} tests need it. "
                        f"Outside CI they would be skipped.", returncode=pytest.ExitCode.TESTS_FAILED)


@pytest.fixture(scope="session")
def data_root() -> str:
    """The real Omniglot (../shared/omniglot beside the repo, or $FEWSHOT_DATA); tests skip without it, except in
    CI (see pytest_collection_finish)."""
    if omniglot_missing():
        pytest.skip(omniglot_missing())
    return DATA_ROOT


@pytest.fixture(scope="session")
def omniglot(data_root):
    from fewshot.omniglot import load_omniglot
    return load_omniglot(data_root)


@pytest.fixture
def tiny_config(data_root) -> Config:
    """A run that takes seconds: a small conv net, few tasks, few iterations."""
    return Config(data_root=data_root, algorithm="fomaml", channels=8, blocks=2, meta_batch=2, iterations=6,
                  val_every=3, val_tasks=4, checkpoint_every=3, test_tasks=10)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The data root of a tiny fake Omniglot, which load_omniglot takes for complete (its ALPHABETS)."""
    from fake_omniglot import TINY, write_fake_omniglot  # here: test_ci runs this file alone, in a folder of its own
    monkeypatch.setattr("fewshot.omniglot.ALPHABETS", TINY)
    write_fake_omniglot(tmp_path / "data", TINY)
    return tmp_path / "data"


@pytest.fixture
def shipped_default_only(tmp_path, monkeypatch):
    """Kept checkpoints and runs in temporary folders; the one checkpoint is the shipped default (MAML 5-way)."""
    from fewshot.adaptation import DEFAULT_CHECKPOINT
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEWSHOT_CHECKPOINTS", str(tmp_path / "checkpoints"))
    (tmp_path / "checkpoints").mkdir()
    shutil.copyfile(REPO / "checkpoints" / DEFAULT_CHECKPOINT, tmp_path / "checkpoints" / DEFAULT_CHECKPOINT)
    return tmp_path
