"""The command line a newcomer meets: help, version, hostile arguments (never a traceback), quiet output.

Most calls run in-process through cli.main (fast); a handful run `melanoma` as a real subprocess (the entry point,
the exit status and the imports a fresh interpreter makes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from melanoma import __version__, cli

MELANOMA = Path(sys.executable).with_name("melanoma")
ERROR_LINE = re.compile(r"^(melanoma( [\w-]+)?: )?error: ")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def assert_one_line_error(rc, out: str, err: str, expect: str) -> str:
    """Non-zero exit, no traceback, exactly one error line on stderr, naming `expect`; returns that line."""
    assert rc not in (0, None), f"exit status {rc}; stderr:\n{err}"
    assert "Traceback" not in out + err, err
    errors = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(errors) == 1, f"expected one error line, got:\n{err}"
    assert expect in errors[0], f"{expect!r} not in {errors[0]!r}"
    return errors[0]


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ------------------------------------------------------------------------------------------------ hostile inputs


CLASSES = ["actinic keratosis", "basal cell carcinoma", "dermatofibroma", "melanoma", "nevus",
           "pigmented benign keratosis", "seborrheic keratosis", "squamous cell carcinoma", "vascular lesion"]


def _write_predictions(path: Path, n: int, n_melanoma: int) -> None:
    """A prediction CSV (the layout `evaluate` writes) of random probabilities; the first n_melanoma are melanomas."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = [",".join(["image", "path", *CLASSES, "prediction", "label"])]
    for i in range(n):
        p = rng.dirichlet(np.ones(len(CLASSES)))
        rows.append(",".join([f"i{i}.jpg", "", *(f"{v:.6f}" for v in p), "nevus",
                              "melanoma" if i < n_melanoma else "nevus"]))
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def bad(tmp_path_factory, shared_train) -> dict[str, str]:
    """Paths a careless or hostile user might pass, and a working model and image for the other arguments."""
    from melanoma.artifacts import build_test_model

    root = tmp_path_factory.mktemp("hostile")
    model = build_test_model(root / "model", image_size=64)
    corrupt_model = root / "corrupt-model"
    shutil.copytree(model, corrupt_model)
    (corrupt_model / "model.json").write_text('{"format": "melanoma-model", "class_names": [')
    (root / "empty.jpg").write_bytes(b"")
    (root / "empty-dir").mkdir()
    (root / "corrupt.jpg").write_bytes(os.urandom(2000))
    (root / "corrupt.csv").write_bytes(b"\xff\xfe\x00garbage,\x00\n\x81")
    (root / "bad.yaml").write_text("epochs: [\n")
    (root / "a-file.txt").write_text("not a folder")
    corrupt_data = root / "corrupt-data"
    for label, name in (("melanoma", "a.jpg"), ("nevus", "b.jpg")):
        (corrupt_data / label).mkdir(parents=True)
        (corrupt_data / label / name).write_bytes(os.urandom(300))
    image = root / "lesion.jpg"
    shutil.copy(sorted((shared_train / "melanoma").glob("*.jpg"))[0], image)
    (root / "existing.csv").write_text("image\n")
    scored = root / "scored-model"  # a model with validation predictions, so threshold gets to writing
    shutil.copytree(model, scored)
    _write_predictions(scored / "val_predictions.csv", n=60, n_melanoma=15)
    site_model = root / "site-model"  # a model whose card holds a validation operating point
    shutil.copytree(model, site_model)
    meta = json.loads((site_model / "model.json").read_text())
    (site_model / "model.json").write_text(json.dumps({**meta, "metrics": {"melanoma_sensitivity": 0.9,
                                                                           "melanoma_specificity": 0.7}}))
    site = root / "site.csv"  # 60 images' predictions at a site, no diagnoses
    _write_predictions(site, n=60, n_melanoma=0)
    return {"site_model": str(site_model), "site_predictions": str(site),
            "root": str(root), "model": str(model), "corrupt_model": str(corrupt_model),
            "missing": str(root / "missing"), "empty_file": str(root / "empty.jpg"),
            "empty_dir": str(root / "empty-dir"), "corrupt_image": str(root / "corrupt.jpg"),
            "corrupt_csv": str(root / "corrupt.csv"), "bad_yaml": str(root / "bad.yaml"),
            "corrupt_data": str(corrupt_data), "scored_model": str(scored), "image": str(image), "existing_file": str(root / "existing.csv"),
            # as root, permissions do not stop a write: a path under a regular file cannot be created by anyone
            "unwritable": str(root / "a-file.txt" / "sub")}


# (argv with {placeholders} from `bad`, text the one error line must contain)
HOSTILE = [
    # audit
    (["audit", "{missing}"], "{missing}"),
    (["audit", ""], "empty path"),
    (["audit", "{empty_dir}"], "{empty_dir}"),
    (["audit", "{empty_file}"], "{empty_file}"),
    (["audit", "{corrupt_image}"], "{corrupt_image}"),
    (["audit", "{corrupt_csv}"], "{corrupt_csv}"),
    (["audit", "{corrupt_data}"], "{corrupt_data}"),
    (["audit", "{corrupt_data}", "--json", "{unwritable}/a.json"], "{unwritable}"),
    (["audit", "{corrupt_data}", "--against", "{missing}"], "{missing}"),
    # augment
    (["augment", "{missing}", "--per-class", "5", "--out", "{root}/aug1"], "{missing}"),
    (["augment", "{empty_dir}", "--per-class", "5", "--out", "{root}/aug2"], "{empty_dir}"),
    (["augment", "{corrupt_data}", "--per-class", "5", "--out", "{unwritable}"], "{unwritable}"),
    (["augment", "{corrupt_data}", "--per-class", "5", "--out", "{corrupt_data}/inside"], "inside the dataset"),
    (["augment", "{corrupt_data}", "--out", "{root}/aug3"], "--per-class"),
    # train (every case fails before a run folder or a model is made)
    (["train"], "--data"),
    (["train", "--data", "{missing}", "--out", "{root}/run1"], "{missing}"),
    (["train", "--data", "{empty_dir}", "--out", "{root}/run2"], "{empty_dir}"),
    (["train", "--data", "{corrupt_csv}", "--out", "{root}/run3"], "{corrupt_csv}"),
    (["train", "--config", "{bad_yaml}", "--out", "{root}/run4"], "{bad_yaml}"),
    (["train", "--config", "{missing}.yaml"], "{missing}.yaml"),
    (["train", "--resume", "{empty_dir}"], "config.yaml"),
    (["train", "--data", "{corrupt_data}", "--out", "{unwritable}"], "{unwritable}"),
    (["train", "--data", "{corrupt_data}", "--weights", "{missing}.pt"], "{missing}.pt"),
    (["train", "--data", "{corrupt_data}", "--folds", "3", "--model", "seed-cnn", "--epochs", "x"], "--epochs"),
    # threshold
    (["threshold", "{model}", "--target-sensitivity", "0.9", "--in-place"], "val_predictions.csv"),
    (["threshold", "{corrupt_model}", "--target-sensitivity", "0.9", "--in-place"], "model.json"),
    (["threshold", "{corrupt_model}", "--target-sensitivity", "0.9", "--in-place", "--predictions",
      "{corrupt_csv}"], "model.json"),
    (["threshold", "{model}", "--target-sensitivity", "1.5", "--in-place"], "--target-sensitivity"),
    (["threshold", "{model}", "--target-sensitivity", "0.9", "--in-place", "--predictions", "{corrupt_csv}"],
     "{corrupt_csv}"),
    (["threshold", "{model}", "--target-sensitivity", "0.9", "--in-place", "--predictions", "{corrupt_image}"],
     "{corrupt_image}"),
    (["threshold", "{model}", "--target-sensitivity", "0.9"], "--in-place"),
    (["threshold", "{model}", "--target-sensitivity", "0.9", "--in-place", "--out", "{root}/t"], "--in-place"),
    (["threshold", "{empty_dir}", "--target-sensitivity", "0.9", "--in-place"], "model.json"),
    (["threshold", "{scored_model}", "--target-sensitivity", "0.9", "--out", "{unwritable}"], "{unwritable}"),
    (["threshold", "{scored_model}", "--target-sensitivity", "0.9", "--out", "{existing_file}"], "{existing_file}"),
    # site-threshold
    (["site-threshold", "{site_model}", "--predictions", "{corrupt_csv}", "--prevalence", "0.1", "--in-place"],
     "{corrupt_csv}"),
    (["site-threshold", "{site_model}", "--predictions", "{existing_file}", "--prevalence", "0.1", "--in-place"],
     "{existing_file}"),
    (["site-threshold", "{site_model}", "--predictions", "{corrupt_image}", "--prevalence", "0.1", "--in-place"],
     "{corrupt_image}"),
    (["site-threshold", "{corrupt_model}", "--predictions", "{site_predictions}", "--prevalence", "0.1",
      "--in-place"], "model.json"),
    (["site-threshold", "{model}", "--predictions", "{site_predictions}", "--prevalence", "0.1", "--in-place"],
     "operating point"),
    (["site-threshold", "{site_model}", "--predictions", "{site_predictions}", "--prevalence", "1", "--in-place"],
     "--prevalence"),
    (["site-threshold", "{site_model}", "--predictions", "{site_predictions}", "--prevalence", "0.1", "--out",
      "{unwritable}"], "{unwritable}"),
    (["site-threshold", "{site_model}", "--predictions", "{site_predictions}", "--prevalence", "0.1", "--out",
      "{existing_file}"], "{existing_file}"),
    # evaluate
    (["evaluate", "--model", "{missing}", "--data", "{corrupt_data}"], "{missing}"),
    (["evaluate", "--model", "{corrupt_model}", "--data", "{corrupt_data}"], "model.json"),
    (["evaluate", "--model", "{corrupt_image}", "--data", "{corrupt_data}"], "{corrupt_image}"),
    (["evaluate", "--model", "{model}", "--data", "{empty_dir}"], "{empty_dir}"),
    (["evaluate", "--model", "{model}", "--data", "{corrupt_csv}"], "{corrupt_csv}"),
    (["evaluate", "--model", "{model}", "--data", "{corrupt_data}", "--out", "{root}/ev1", "--no-overlap-check"],
     "{corrupt_data}"),
    (["evaluate", "--model", "{model}", "--data", "{corrupt_data}", "--no-overlap-check",
      "--exclude-overlap-with", "{empty_dir}"], "not allowed with"),
    (["evaluate", "--model", "{model}", "--data", "{corrupt_data}", "--label-map", "{missing}.yaml"],
     "{missing}.yaml"),
    (["evaluate", "--model", "{model}", "--data", "{corrupt_data}", "--out", "{unwritable}"], "{unwritable}"),
    # report
    (["report", "{missing}"], "{missing}"),
    (["report", "{empty_dir}"], "{empty_dir}"),
    (["report", "{corrupt_image}"], "{corrupt_image}"),
    # predict
    (["predict", "{missing}", "--model", "{model}"], "image"),
    (["predict", "{corrupt_image}", "--model", "{model}"], "image"),
    (["predict", "{image}", "--model", "{corrupt_model}"], "model.json"),
    (["predict", "{image}", "--model", "{model}", "--explain", "{existing_file}"], "{existing_file}"),
    (["predict", "{image}", "--model", "{model}", "--out", "{unwritable}/p.csv"], "a-file.txt"),
    (["predict", "{image}", "--model", "{model}", "--format", "xml"], "--format"),
    # export
    (["export", "{missing}", "--out", "{root}/m1.onnx"], "{missing}"),
    (["export", "{corrupt_model}", "--out", "{root}/m2.onnx"], "model.json"),
    (["export", "{model}", "--out", "{root}/m3.onnx", "--opset", "5"], "opset"),
    (["export", "{model}", "--out", "{unwritable}/m.onnx"], "{unwritable}"),
    # no command, unknown command, unknown option of a command
    ([], "COMMAND"),
    (["diagnose"], "diagnose"),
    (["audit", "{corrupt_data}", "--near", "3", "--bogus"], "--bogus"),
]


@pytest.mark.parametrize("argv, expect", HOSTILE, ids=[" ".join(a)[:60] or "(none)" for a, _ in HOSTILE])
def test_hostile_arguments_get_one_line_and_no_traceback(argv, expect, bad, capsys):
    rc, out, err = _run([a.format(**bad) for a in argv], capsys)
    assert_one_line_error(rc, out, err, expect.format(**bad))


def _minimal_args(bad) -> dict[str, list[str]]:
    """Valid arguments of each command, to which ONE bad option is added (parsing stops at the bad one)."""
    return {"audit": [bad["corrupt_data"]],
            "augment": [bad["corrupt_data"], "--per-class", "5", "--out", f"{bad['root']}/aug-x"],
            "train": ["--data", bad["corrupt_data"], "--out", f"{bad['root']}/run-x"],
            "threshold": [bad["model"], "--target-sensitivity", "0.9", "--in-place"],
            "site-threshold": [bad["site_model"], "--predictions", bad["site_predictions"], "--prevalence", "0.1",
                               "--in-place"],
            "referral": [bad["model"], "--in-place"],
            "evaluate": ["--model", bad["model"], "--data", bad["corrupt_data"]],
            "report": [bad["model"]],
            "predict": [bad["image"], "--model", bad["model"]],
            "export": [bad["model"], "--out", f"{bad['root']}/x.onnx"],
            "ensemble": [bad["model"], "--out", f"{bad['root']}/ens-x"],
            "serve": ["--model", bad["model"]]}


def _bad_values(action) -> list[str]:
    """Wrongly typed and (for range-checked options) out-of-range values of an option."""
    values = ["abc", ""]
    low, high = getattr(action.type, "low", None), getattr(action.type, "high", None)
    if low is not None:
        values.append(str(low - 1) if action.type.__name__ == "int" else str(low - 0.5))
    if high is not None:
        values.append(str(high + 1) if action.type.__name__ == "int" else str(high + 0.5))
    if action.type.__name__ == "float":
        values += ["nan", "inf"] if low is not None or high is not None else []
    return values


def _typed_options():
    """(command, option, bad value) for every option of every command whose value is a number."""
    for name, parser in _commands().items():
        for action in parser._actions:
            if action.option_strings and getattr(action.type, "__name__", None) in ("int", "float"):
                for value in _bad_values(action):
                    yield name, action.option_strings[-1], value


TYPED = list(_typed_options())


@pytest.mark.parametrize("command, option, value", TYPED, ids=[f"{c} {o} {v!r}" for c, o, v in TYPED])
def test_every_number_option_rejects_wrong_types_and_out_of_range_values(command, option, value, bad, capsys):
    minimal = _minimal_args(bad)
    assert command in minimal, f"add minimal arguments of the new command {command!r} to _minimal_args"
    rc, out, err = _run([command, *minimal[command], option, value], capsys)
    line = assert_one_line_error(rc, out, err, option)
    assert line.startswith(f"melanoma {command}: error: "), "a command's errors carry its own name"
    assert f"usage: melanoma {command}" in err, "a command's errors print its own usage"


def test_every_input_path_option_rejects_a_missing_path(bad, capsys):
    """Options that read a file or folder say which one is missing before anything is loaded."""
    minimal = _minimal_args(bad)
    checked = 0
    for name, parser in _commands().items():
        for action in parser._actions:
            if action.type is cli.existing_path and action.option_strings:
                missing = f"{bad['missing']}-{name}-{action.dest}"
                rc, out, err = _run([name, *minimal[name], action.option_strings[-1], missing], capsys)
                assert_one_line_error(rc, out, err, missing)
                checked += 1
    assert checked >= 10


# ------------------------------------------------------------------------------------------------ help


def test_help_of_every_command_shows_defaults_meanings_and_examples(capsys):
    assert cli.main(["--help"]) == 0 and cli.main(["-h"]) == 0
    top = capsys.readouterr().out
    commands = _commands()
    for name in ("audit", "augment", "train", "threshold", "referral", "evaluate", "report", "predict", "export"):
        assert name in commands and name in top
    for name, parser in commands.items():
        assert cli.main([name, "--help"]) == 0
        text = capsys.readouterr().out
        assert f"usage: melanoma {name}" in text and "example" in text, name
        if name not in DEFINED_ELSEWHERE:
            assert not _options_without_help(parser), name
    train = commands["train"].format_help()
    for option, default in (("--epochs", "12"), ("--val-fraction", "0.2"), ("--batch-size", "32")):
        described = " ".join(train.split(f"\n  {option} ", 1)[1].split("\n  -", 1)[0].split())
        assert f"default: {default}" in described, option


DEFINED_ELSEWHERE = {"serve": "src/melanoma/serve/cli.py"}


def _options_without_help(parser) -> list[str]:
    return [a.option_strings[-1] for a in parser._actions
            if a.option_strings and a.help is not argparse.SUPPRESS and not a.help]


def test_options_of_commands_defined_elsewhere_explain_themselves():
    commands = _commands()
    assert {name: _options_without_help(commands[name]) for name in DEFINED_ELSEWHERE} == \
        {name: [] for name in DEFINED_ELSEWHERE}


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"melanoma {__version__}"


# ------------------------------------------------------------------------------------------------ output


def test_rounding_for_people():
    lines = cli._summary_lines({"melanoma_auc": 0.9722222222222222, "folds": {"balanced_accuracy": [0.51234, 0.6]},
                                "note": None})
    assert lines == ["melanoma auc: 0.972", "folds:", "  balanced accuracy: 0.512, 0.6"]


def test_json_and_summary_and_package_warnings(tmp_path, capsys):
    """threshold: a short summary by default, the full result with --json; its own warning as one stderr line."""
    from melanoma.artifacts import build_test_model

    run = build_test_model(tmp_path / "run", image_size=64)
    _write_predictions(run / "val_predictions.csv", n=40, n_melanoma=10)
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("melanoma alert threshold") and len(captured.out.splitlines()) == 3
    warning = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "only 10 melanomas" in warning[0]
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--out", str(tmp_path / "b"),
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_melanoma"] == 10 and isinstance(result["new"], float)


# ------------------------------------------------------------------------------------------------ subprocesses


def _melanoma(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(MELANOMA), *map(str, argv)], capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.slow
def test_real_command_help_version_and_the_reported_tracebacks(bad):
    """The calls of issue 15, as a newcomer types them: each exits with one line and no traceback."""
    for argv in (["--help"], ["-h"], ["--version"], ["evaluate", "--help"]):
        done = _melanoma(*argv)
        assert done.returncode == 0 and "Traceback" not in done.stderr and done.stdout, argv
    calls = [(["threshold", bad["corrupt_model"], "--target-sensitivity", "0.9", "--in-place", "--predictions",
               bad["corrupt_csv"]], "model.json"),
             (["threshold", bad["model"], "--target-sensitivity", "1.5", "--in-place"], "--target-sensitivity"),
             (["predict", bad["image"], "--model", bad["model"], "--explain", bad["existing_file"]],
              bad["existing_file"]),
             (["export", bad["model"], "--out", f"{bad['root']}/sub.onnx", "--opset", "5"], "opset"),
             (["audit", bad["corrupt_data"], "--workers", "0"], "--workers")]
    for argv, expect in calls:
        done = _melanoma(*argv)
        assert_one_line_error(done.returncode, done.stdout, done.stderr, expect)


@pytest.mark.slow
def test_help_and_audit_do_not_import_torch(tiny_isic):
    """`--help` and `audit` start fast: torch (and the other heavy libraries) are never imported."""
    heavy = ("torch", "lightning", "timm", "torchvision", "onnxruntime", "fastapi", "sklearn")
    probe = ("import sys, runpy\n"
             "sys.argv = ['melanoma', *sys.argv[1:]]\n"
             "from melanoma import cli\n"
             "try:\n    rc = cli.main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
             f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))\n"
             "print('LOADED', loaded, 'RC', rc, file=sys.stderr)\n")
    for argv in (["--help"], ["audit", "--help"], ["audit", str(tiny_isic), "--workers", "1"]):
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=300)
        assert "LOADED [] RC 0" in done.stderr, (argv, done.stderr[-2000:])


def test_audit_json_on_stdout_and_verbose_anywhere(tiny_isic, capsys):
    for argv in (["audit", str(tiny_isic), "--json", "--workers", "1"],
                 ["-v", "audit", str(tiny_isic), "--json", "--workers", "1"],
                 ["audit", str(tiny_isic), "--json", "--workers", "1", "--verbose"]):
        assert cli.main(argv) == 0
        report = json.loads(capsys.readouterr().out)  # stdout is the JSON document and nothing else
        assert report["n_readable"] == 45


def test_a_mistyped_option_prints_the_commands_usage(capsys):
    assert cli.main(["evaluate", "--model", "m", "--data", "d", "--boostrap", "10"]) == 2
    err = capsys.readouterr().err
    assert "usage: melanoma evaluate" in err and "--exclude-overlap-with" in err
    assert err.strip().splitlines()[-1] == "melanoma evaluate: error: unrecognized arguments: --boostrap 10"
