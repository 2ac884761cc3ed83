"""Imported at the start of every Python process whose PYTHONPATH holds this folder (tests/train_fixtures.py's
``pause_after_first_checkpoint``): when ``recsys_core.training_loop`` is loaded, its ``save_checkpoint`` is wrapped
so that the first checkpoint, once wholly on disk, writes the file named by $RECSYS_TEST_PAUSE_MARKER and the
process then sleeps. A test that kills the training at that marker kills it between two epochs every time: the
run cannot finish first however loaded the machine is (issue 23: kill races synchronised on an event)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time

MODULE = "recsys_core.training_loop"


def _pause_after_first_save(module) -> None:
    marker = os.environ["RECSYS_TEST_PAUSE_MARKER"]
    real = module.save_checkpoint

    def save_then_pause(path, state):
        real(path, state)
        if not os.path.exists(marker):
            with open(marker + ".tmp", "w") as f:
                f.write(f"{os.getpid()} {path}\n")
            os.replace(marker + ".tmp", marker)
            time.sleep(3600)  # killed here by the test

    module.save_checkpoint = save_then_pause


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            _pause_after_first_save(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("RECSYS_TEST_PAUSE_MARKER"):
    sys.meta_path.insert(0, _PatchOnImport())
