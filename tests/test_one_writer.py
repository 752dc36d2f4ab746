"""One writer: every file the project writes goes through ``preprocessing.atomic`` (a temporary,
fsync, rename, the umask's mode), never through a hand-made temporary-and-rename or a bare write.

The source of pipelines/, preprocessing/, vhp_core/ and bench/ is read for the calls that write
or swap files (``Path.write_text``/``write_bytes``, ``open`` for writing, ``os.replace``,
``os.rename``, ``shutil.move``, ``tempfile.mkstemp``); each place allowed to make one is
listed below with its reason.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("pipelines", "preprocessing", "vhp_core", "bench")

# file -> (how many writing calls it may hold, why)
ALLOWED: dict[str, tuple[int, str]] = {
    "preprocessing/atomic.py": (6, "the writer itself"),
    "preprocessing/download.py": (2, "a resumable download: appends to <target>.part, then renames it"),
    "preprocessing/embedded.py": (3, "files inside atomic_folder's staging folder"),
    "pipelines/runtime.py": (1, "the run lock's pid note, inside the lock"),
    "pipelines/__init__.py": (1, "Prefect's logging settings, a per-process file in the temporary folder"),
    "bench/_machine.py": (1, "/proc/self/clear_refs (resets the peak-memory counter)"),
    "bench/preprocess.py": (1, "unpacks the pyacclaim sources it times into a temporary folder"),
}
WRITING_METHODS = {"write_text", "write_bytes"}
SWAPS = {("os", "replace"), ("os", "rename"), ("shutil", "move"), ("tempfile", "mkstemp")}


def _writes_for(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute):
        if func.attr in WRITING_METHODS:
            return True
        if isinstance(func.value, ast.Name) and (func.value.id, func.attr) in SWAPS:
            return True
    if isinstance(func, ast.Name) and func.id == "open":
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        # a mode we cannot read (a variable) counts: it may write
        return mode is not None and not (isinstance(mode, ast.Constant) and set(str(mode.value)) <= set("rbt"))
    return False


def writing_calls() -> Counter[str]:
    found: Counter[str] = Counter()
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            tree = ast.parse(path.read_text())
            rel = str(path.relative_to(ROOT))
            found[rel] += sum(isinstance(node, ast.Call) and _writes_for(node) for node in ast.walk(tree))
    return +found  # files without any drop out


def test_every_writer_goes_through_the_one_writer() -> None:
    found = writing_calls()
    unexpected = {f: n for f, n in found.items() if n > ALLOWED.get(f, (0, ""))[0]}
    assert not unexpected, (f"files that write or swap files by hand (use preprocessing.atomic's atomic_write, "
                            f"atomic_write_text or atomic_folder): {unexpected}")


def test_the_allowances_are_still_needed() -> None:
    # an allowance nothing uses any more is removed, so the list stays the truth
    found = writing_calls()
    stale = {f: n for f, (n, _) in ALLOWED.items() if n and found.get(f, 0) < n}
    assert not stale, f"allowances larger than what the file holds: {stale} (found {dict(found)})"


def test_the_scan_sees_a_hand_made_swap() -> None:
    tree = ast.parse("tmp.write_text(text)\nos.replace(tmp, out)\nopen(p, 'w')\nopen(p)\nopen(p, 'rb')\nopen(p, mode)")
    assert [_writes_for(n) for n in ast.walk(tree) if isinstance(n, ast.Call)] == [True, True, True, False, False, True]
