"""`make mutate`'s speed rests on one hook in tests/conftest.py: under mutmut a mutant's tests run
fastest first (docs/testing.md: the checkpoint's mutants went from ~30 s to ~2 s each)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

# by path: tests/widgets/conftest.py is a "conftest" module too
_spec = importlib.util.spec_from_file_location("_tests_root_conftest", Path(__file__).parents[1] / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)


def test_under_mutmut_a_mutants_tests_run_fastest_first_and_otherwise_as_collected(tmp_path, monkeypatch):
    (tmp_path / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": {
        "tests/a.py::slow": 30.0, "tests/b.py::fast": 0.01, "tests/a.py::mid": 1.0}}))
    config = SimpleNamespace(rootpath=tmp_path)

    def order():
        items = [SimpleNamespace(nodeid=n) for n in
                 ("tests/a.py::slow", "tests/c.py::unknown", "tests/b.py::fast", "tests/a.py::mid")]
        conftest.pytest_collection_modifyitems(config, items)
        return [i.nodeid for i in items]

    monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)
    assert order() == ["tests/a.py::slow", "tests/c.py::unknown", "tests/b.py::fast", "tests/a.py::mid"]
    monkeypatch.setenv("MUTANT_UNDER_TEST", "napari_dfa.x.x_f__mutmut_1")
    assert order() == ["tests/b.py::fast", "tests/a.py::mid", "tests/a.py::slow", "tests/c.py::unknown"]
    (tmp_path / "mutmut-stats.json").unlink()  # no stats (yet): as collected
    assert order() == ["tests/a.py::slow", "tests/c.py::unknown", "tests/b.py::fast", "tests/a.py::mid"]
