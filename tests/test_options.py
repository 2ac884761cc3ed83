"""Model options: one declaration per model read by the CLI, the flow and resuming; every bad value is one
sentence naming the model, the option and the value, refused before any work starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixtures import make_rating_split

from recsys_core import models
from recsys_core.cli import main
from recsys_core.errors import RecsysError
from recsys_core.options import ModelOptions, option, options

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model,given,message", [
    ("mf", {"lr": float("nan")}, "model mf: option lr must be a finite number, got nan"),
    ("autoencoder", {"dropout": 2}, "model autoencoder: option dropout must be at least 0 and below 1, got 2"),
    ("neumf", {"epochs": -3}, "model neumf: option epochs must be at least 1, got -3"),
    ("mf", {"epochs": 2.5}, "model mf: option epochs must be an integer, got 2.5"),
    ("mf", {"squash": "yes"}, "model mf: option squash must be true or false, got 'yes'"),
    ("autoencoder", {"layers": [128, 0]}, "model autoencoder: option layers must be a list of integers of at least 1"),
    ("autoencoder", {"layers": []}, "model autoencoder: option layers must be a list of at least 1 integer"),
    ("autoencoder", {"optimizer": "adamw"}, "option optimizer must be one of sgd, adam, adagrad, rmsprop, got 'adamw'"),
    ("autoencoder", {"preset": "N2M"}, "option preset must be one of N3M, N6M, N1Y, NF, got 'N2M'"),
    ("mf", {"layers": [3]}, "model mf has no option layers; its options are "),
])
def test_bad_values_are_one_sentence_naming_model_option_and_value(model, given, message):
    with pytest.raises(RecsysError) as err:
        models.resolve_options(model, given)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_values_are_normalized_and_presets_apply_before_given_options():
    config = models.resolve_options("autoencoder", {"lr": 1, "layers": [8, 4], "preset": "N3M", "dropout": 0.1})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.layers == (8, 4) and config.dropout == 0.1  # given beats the preset
    assert config.refeed == 1 and config.optimizer == "sgd"  # the rest of the preset
    assert config.to_dict()["layers"] == [8, 4]
    assert models.resolve_options("autoencoder", {"layers": None}).layers == (64,)  # None = not given
    saved = json.loads(json.dumps({**config.to_dict(), "model": "autoencoder", "split_dir": "x"}))
    assert models.get("autoencoder").options.from_saved(saved) == config


def test_every_option_is_described_for_command_lines_and_sweeps():
    for name, registration in models.catalogue().items():
        for info in registration.options.describe():
            assert info.help and info.kind in ("int", "float", "bool", "str", "ints"), (name, info)
            if info.kind == "str" and (name, info.name) != ("blend", "members"):  # members: run names, free text
                assert info.choices, (name, info.name)
    lr = {i.name: i for i in models.get("mf").options.describe()}["lr"]
    assert (lr.default, lr.low, lr.low_open, lr.log) == (0.002, 0, True, True)


def test_a_subclass_changes_a_default_and_keeps_the_declaration():
    @options
    class Small(ModelOptions):
        width: int = option(4, "width", low=1)

    @options
    class Wider(Small):
        width: int = 16

    assert Wider().width == 16
    assert {i.name: i for i in Wider.describe()}["width"].help == "width"
    with pytest.raises(RecsysError, match="option width must be at least 1, got 0"):
        Wider.resolve({"width": 0})


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return make_rating_split(tmp_path_factory.mktemp("opts") / "N3M", n_users=120, n_items=40, n_ratings=3000)


@pytest.mark.parametrize("args,message", [
    (["--lr", "nan"], "option lr must be a finite number, got nan"),
    (["--dropout", "2"], "option dropout must be at least 0 and below 1, got 2"),
    (["-k", "0"], "k must be at least 1 (items per user; an integer), got 0"),
    (["--epochs", "-1"], "option epochs must be at least 1, got -1"),
    (["--model", "mf", "--layers", "8"], "model mf has no option layers"),
    (["--device", "cuda:7"], "no usable CUDA GPU"),
])
def test_train_refuses_bad_options_before_any_work(split, tmp_path, capsys, args, message):
    run = tmp_path / "run"
    assert main(["train", str(split.path), str(run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not run.exists()


def test_recommend_refuses_k_0_before_reading_the_run(tmp_path, capsys):
    assert main(["recommend", str(tmp_path / "no-run"), "-k", "0"]) == 2
    assert "k (items per user) must be an integer of at least 1, got 0" in capsys.readouterr().err


def test_generated_flags_take_the_comma_form_and_reach_the_model(split, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(split.path), str(run), "--layers", "12,6", "--epochs", "1", "--no-amp",
                 "--recall-users", "0"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["layers"], config["epochs"], config["amp"], config["model"]) == ([12, 6], 1, False, "autoencoder")


def test_help_lists_every_registered_model_and_every_option(capsys):
    from recsys_core.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for name, registration in models.catalogue().items():
        assert name in text
        for info in registration.options.describe():
            assert "--" + info.name.replace("_", "-") in text, (name, info.name)


def test_convert_command_does_not_import_torch():
    """A stage imports what it needs: the convert command (parser and library) leaves torch unloaded."""
    code = ("import sys\nfrom recsys_core.cli import main\n"
            "try:\n    main(['convert', '--help'])\nexcept SystemExit:\n    pass\n"
            "import recsys_core.convert\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_flow_model_options_are_checked_for_every_model_before_any_stage():
    from flows.parameters import train_arguments

    arguments = train_arguments(["autoencoder", "ease"], {"autoencoder": {"layers": [128, 256, 256]}}, seed=3, k=5)
    assert {m: options for m, (options, _) in arguments.items()} == {
        "autoencoder": {"seed": 3, "layers": [128, 256, 256]}, "ease": {}}
    assert {m: settings.k for m, (_, settings) in arguments.items()} == {"autoencoder": 5, "ease": 5}
    for models_, given, message in (
            (["mf"], {"mf": {"dim": 0}}, "model mf: option dim must be at least 1, got 0"),
            (["mf"], {"gmf": {"dim": 8}}, "model_options names gmf, which is not among the models to train"),
            (["mf", "nope"], None, "unknown model 'nope'; choose one of "),
            (["mf"], {"mf": [8]}, "model_options must map model names to objects of options"),
            ([], None, "models is empty")):
        with pytest.raises(RecsysError, match=message.replace("(", r"\(")):
            train_arguments(models_, given, seed=0, k=10)
    with pytest.raises(RecsysError, match=r"k must be at least 1 \(items per user; an integer\), got 0"):
        train_arguments(["ease"], None, seed=0, k=0)


def test_flow_help_lists_every_registered_model():
    from flows.full import build_parser

    text = build_parser().format_help()
    for name in models.names():
        assert name in text
    assert "--model-options" in text and "--layers" not in text and "--epochs" not in text
