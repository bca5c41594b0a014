"""The drop-in examples: an NNI L1NormPruner script and its MRS version run on real Fashion-MNIST, differ only in
imports, pruner lines and the training function, and the docs show their actual diff."""
from __future__ import annotations

import ast
import difflib
import os
import re
import subprocess
import sys
import tokenize
from io import StringIO
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import run_python

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "drop_in"
L1, MRS = EXAMPLES / "nni_l1_pruning.py", EXAMPLES / "nni_mrs_pruning.py"
TINY = ["--train-subset", "512", "--test-subset", "200", "--pgd-steps", "2"]
MRS_SPARSITY = 0.6  # a global FLOPs fraction; as L1NormPruner's per-layer ratio it would remove about 84%
ROW = re.compile(r"^(dense|pruned|finetuned)\s+params\s+([\d,]+)\s+FLOPs\s+([\d,]+)\s+clean acc\s+([\d.]+)%\s+"
                 r"PGD-\d+ acc\s+([\d.]+)%$", re.M)


def run_example(script: Path, *args: str) -> Dict[str, Dict[str, float]]:
    """Run an example in a fresh interpreter; its printed rows as {stage: {params, flops, clean, pgd}}."""
    result = run_python([str(script), *args], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {stage: {"params": int(params.replace(",", "")), "flops": int(flops.replace(",", "")),
                    "clean": float(clean) / 100, "pgd": float(pgd) / 100}
            for stage, params, flops, clean, pgd in ROW.findall(result.stdout)}
    assert list(rows) == ["dense", "pruned", "finetuned"], result.stdout[-3000:]
    return rows


@pytest.fixture(scope="module")
def runs() -> Dict[str, Dict[str, Dict[str, float]]]:
    return {"l1": run_example(L1, *TINY), "mrs": run_example(MRS, *TINY, "--sparsity", str(MRS_SPARSITY))}


@pytest.mark.slow
def test_l1_script_prunes_half_of_every_conv_and_fine_tunes(runs):
    dense, pruned, tuned = runs["l1"]["dense"], runs["l1"]["pruned"], runs["l1"]["finetuned"]
    assert pruned["params"] < 0.6 * dense["params"]
    # half of each conv's output channels, so about a quarter of the conv FLOPs remain
    assert 0.2 < pruned["flops"] / dense["flops"] < 0.3
    assert (tuned["params"], tuned["flops"]) == (pruned["params"], pruned["flops"])
    assert tuned["clean"] > pruned["clean"]


@pytest.mark.slow
def test_mrs_script_removes_the_global_flops_fraction(runs):
    dense, pruned, tuned = runs["mrs"]["dense"], runs["mrs"]["pruned"], runs["mrs"]["finetuned"]
    assert pruned["flops"] < dense["flops"] and pruned["params"] < dense["params"]
    assert abs(1 - pruned["flops"] / dense["flops"] - MRS_SPARSITY) <= 0.015
    assert (tuned["params"], tuned["flops"]) == (pruned["params"], pruned["flops"])
    assert tuned["clean"] > pruned["clean"]


@pytest.mark.parametrize("script, args, message", [
    (L1, ["--sparsity", "1.5"], "argument --sparsity: must be in (0, 1), got 1.5"),
    (MRS, ["--train-subset", "0"], "argument --train-subset: must be >= 1, got 0"),
], ids=["l1-sparsity", "mrs-train-subset"])
def test_bad_options_get_one_line_errors(script, args, message):
    result = run_python([str(script), *args], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(message), result.stderr[-2000:]


# --- the diff -------------------------------------------------------------------------------------------------------

ALLOWED = {"blank", "comment", "import", "pruner", "training"}


def line_roles(source: str) -> Dict[int, str]:
    """Role of each line (1-based): blank, comment (or the module docstring), import, training (the ``train``
    function, or ``training_step = ...``), pruner (a statement that builds the config_list or a pruner, or defines
    ``--sparsity``), or other."""
    lines = source.splitlines()
    roles = {n: "blank" if not line.strip() else "other" for n, line in enumerate(lines, 1)}
    tree = ast.parse(source)

    def mark(node: ast.AST, role: str) -> None:
        for n in range(node.lineno, node.end_lineno + 1):
            if roles[n] == "other":
                roles[n] = role

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mark(node, "import")
        elif isinstance(node, ast.FunctionDef) and node.name == "train":
            mark(node, "training")
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "training_step" for t in node.targets):
            mark(node, "training")  # training_step = AdversarialTrainer(...).training_step
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(getattr(tree.body[0], "value", None),
                                                                       ast.Constant):
        mark(tree.body[0], "comment")  # the module docstring
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.Expr)):
            segment = ast.get_source_segment(source, node) or ""
            if "Pruner(" in segment or "config_list" in segment or '"--sparsity"' in segment:
                mark(node, "pruner")
    for token in tokenize.generate_tokens(StringIO(source).readline):
        if token.type == tokenize.COMMENT and lines[token.start[0] - 1].lstrip().startswith("#"):
            roles[token.start[0]] = "comment"
    return roles


def disallowed_changes(old: str, new: str) -> List[str]:
    """Changed lines of ``old`` -> ``new`` (as difflib, and so ``diff -u``, pairs them) outside the allowed roles."""
    a, b = old.splitlines(), new.splitlines()
    roles_a, roles_b = line_roles(old), line_roles(new)
    bad = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        bad += [f"-{n}: {a[n - 1]}" for n in range(i1 + 1, i2 + 1) if roles_a[n] not in ALLOWED]
        bad += [f"+{n}: {b[n - 1]}" for n in range(j1 + 1, j2 + 1) if roles_b[n] not in ALLOWED]
    return bad


def changed(old: str, new: str) -> str:
    return "\n".join(line for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="")
                     if line[:1] in "+-" and line[:3] not in ("+++", "---"))


def test_scripts_differ_only_in_imports_pruner_lines_and_training_function():
    old, new = L1.read_text(), MRS.read_text()
    assert disallowed_changes(old, new) == []
    diff = changed(old, new)
    for expected in ("-    pruner = L1NormPruner(", "+    pruner = MRSPruner(", "+    trainer = AdversarialTrainer(",
                     "-            loss = F.cross_entropy(", "+            loss = trainer.loss("):
        assert expected in diff
    # NNI's workflow itself is untouched: same compress/unwrap/speedup and the same evaluation in both
    for line in ("    _, masks = pruner.compress()", "    pruner.unwrap_model()",
                 "    model = ModelSpeedup(model, dummy_input, masks).speedup_model()",
                 "    train(model, train_loader, args.finetune_epochs, args)"):
        assert line in old.splitlines() and line in new.splitlines() and line not in diff


def test_diff_check_catches_changes_elsewhere():
    old, new = L1.read_text(), MRS.read_text()
    tampered = new.replace("test_loader = DataLoader(test_set, batch_size=250)",
                           "test_loader = DataLoader(test_set, batch_size=500)")
    assert tampered != new
    assert [line[0] + line.split(": ", 1)[1] for line in disallowed_changes(old, tampered)] == [
        "-    test_loader = DataLoader(test_set, batch_size=250)",
        "+    test_loader = DataLoader(test_set, batch_size=500)"]
    evaluated = new.replace('("clean", pgd)', '("clean", "fgsm")')  # inside evaluate(): not an allowed place
    assert len(disallowed_changes(old, evaluated)) == 2
    # a changed comment is fine; a changed --eps default is not
    assert disallowed_changes(old, new.replace("# it groups", "# MRSPruner groups")) == []
    assert len(disallowed_changes(old, new.replace("type=fraction, default=0.1,", "type=fraction, default=0.3,"))) == 2


def docs_diff() -> List[str]:
    text = (ROOT / "docs" / "nni-scripts.md").read_text()
    section = text.split("## Drop-in for NNI scripts", 1)
    assert len(section) == 2, "docs/nni-scripts.md has no 'Drop-in for NNI scripts' section"
    block = re.search(r"```diff\n(.*?)```", section[1], re.S)
    assert block, "the drop-in section has no ```diff block"
    return block.group(1).splitlines()


def real_diff() -> List[str]:
    return list(difflib.unified_diff(L1.read_text().splitlines(), MRS.read_text().splitlines(),
                                     "nni_l1_pruning.py", "nni_mrs_pruning.py", lineterm=""))


def test_docs_show_the_actual_diff():
    real, shown = real_diff(), docs_diff()
    assert shown[0].startswith("--- nni_l1_pruning.py") and shown[1].startswith("+++ nni_mrs_pruning.py")
    assert shown[2:] == real[2:], ("docs/nni-scripts.md's diff is stale: paste the output of `cd examples/drop_in && "
                                   "diff -u nni_l1_pruning.py nni_mrs_pruning.py`")


def test_readme_excerpt_is_from_the_actual_diff():
    """The README's quick start shows a few hunks: each line it shows is a line of the real diff, in order."""
    section = (ROOT / "README.md").read_text().split("## Quick start 2", 1)[1]
    block = section.split("```diff\n", 1)[1].split("```", 1)[0]
    real = iter(real_diff()[2:])
    for line in block.splitlines():
        if line.strip() != "...":
            assert any(line == candidate for candidate in real), f"not in the real diff, in order: {line!r}"


# --- NNI's own pruning examples and their MRS twins ---------------------------------------------------------------

NNI_EXAMPLES = ROOT / "examples" / "nni_examples"
TWINS = ["norm_pruning", "taylor_pruning", "scheduled_pruning", "quickstart_pruning"]
PRINTED = re.compile(r"Original model paramater number:\s+(\d+).*Pruned model paramater number:\s+(\d+).*"
                     r"after finetuning acc:\s+([\d.]+) %, PGD-20 acc:\s+([\d.]+) %", re.S)


@pytest.mark.parametrize("name", TWINS)
def test_nni_examples_twins_differ_only_in_imports_pruner_and_training_step(name):
    old, new = (NNI_EXAMPLES / f"{name}.py").read_text(), (NNI_EXAMPLES / f"{name}_mrs.py").read_text()
    assert disallowed_changes(old, new) == []
    diff = changed(old, new)
    assert "MRSPruner(" in diff and "AdversarialTrainer(" in diff
    assert "nni_mrs_plugin" not in old.replace("nni_mrs_plugin import build_model", "")


@pytest.mark.slow
@pytest.mark.parametrize("name", TWINS)
def test_nni_examples_and_their_mrs_twins_run(name):
    """Both scripts run unchanged on real Fashion-MNIST (tiny sizes) and prune the model."""
    env = {"NNI_EXAMPLES_TRAIN": "300", "NNI_EXAMPLES_TEST": "100", "OMP_NUM_THREADS": "2"}
    for script in (f"{name}.py", f"{name}_mrs.py"):
        result = subprocess.run([sys.executable, script], cwd=NNI_EXAMPLES, capture_output=True, text=True,
                                env=dict(os.environ, **env), timeout=600)
        assert result.returncode == 0, (script, result.stderr[-3000:])
        found = PRINTED.search(result.stdout)
        assert found, (script, result.stdout[-2000:])
        dense, pruned, clean, pgd = int(found[1]), int(found[2]), float(found[3]), float(found[4])
        assert pruned < dense and 0 <= pgd <= clean <= 100, (script, found.groups())
