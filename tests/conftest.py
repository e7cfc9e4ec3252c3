import os
from pathlib import Path

import pytest

from fewshot.config import Config

DATA_ROOT = os.environ.get("FEWSHOT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "omniglot"))


@pytest.fixture(scope="session")
def data_root() -> str:
    """The real Omniglot (../shared/omniglot beside the repo, or $FEWSHOT_DATA); tests skip without it."""
    if not (Path(DATA_ROOT) / "omniglot-py").is_dir():
        pytest.skip(f"Omniglot not found at {DATA_ROOT}")
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
