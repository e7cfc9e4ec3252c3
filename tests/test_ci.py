"""CI runs the README's test command, and a missing Omniglot fails it there instead of skipping a third of it."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDS_DATA = "def test_reads_omniglot(data_root):\n    assert data_root\n"


def readme_test_command() -> str:
    """The command in the README's block after "Run the tests:"."""
    return re.search(r"Run the tests:\n\n```bash\n(.+)\n```", (REPO / "README.md").read_text()).group(1)


def pytest_without_omniglot(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess:
    """The README's test command, run on one test that needs Omniglot, with this repository's pytest.ini and
    conftest.py, $FEWSHOT_DATA an empty folder, and CI=true or no CI at all."""
    (tmp_path / "tests").mkdir()
    shutil.copy(REPO / "pytest.ini", tmp_path)
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "tests")
    (tmp_path / "tests" / "test_needs_data.py").write_text(NEEDS_DATA)
    (tmp_path / "empty").mkdir()
    environment = {key: value for key, value in os.environ.items() if key not in ("CI", "PYTEST_ADDOPTS")}
    environment.update(FEWSHOT_DATA=str(tmp_path / "empty"), PYTHONPATH=str(REPO), **({"CI": "true"} if ci else {}))
    command = readme_test_command().replace("python3", sys.executable, 1).split()
    return subprocess.run(command + ["-p", "no:cacheprovider"], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_ci_runs_the_readmes_test_command_last():
    script = (REPO / ".ci" / "run").read_text()
    assert script.strip().splitlines()[-1] == readme_test_command() == "python3 -m pytest"
    assert "set -euo pipefail" in script and "\nexport CI=true" in script  # a failing step fails CI; see conftest.py


def test_in_ci_a_missing_omniglot_fails_the_run_naming_where_it_looked(tmp_path):
    result = pytest_without_omniglot(tmp_path, ci=True)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"Omniglot not found at {tmp_path / 'empty'}" in output and "$FEWSHOT_DATA" in output, output
    assert "1 of the 1 tests need it" in output and "no tests ran" in output, output


def test_outside_ci_a_missing_omniglot_skips_and_the_summary_says_why(tmp_path):
    result = pytest_without_omniglot(tmp_path, ci=False)
    assert result.returncode == 0, result.stdout + result.stderr
    skip_lines = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED [1]")]
    assert len(skip_lines) == 1 and f"Omniglot not found at {tmp_path / 'empty'}" in skip_lines[0], result.stdout
    assert "1 skipped" in result.stdout
