"""The pipeline's parameters, declared once (flows/parameters.py): the flow's signature and Prefect schema, the
command line, the deployment checks and README.md's table are all made from the declaration."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
from pathlib import Path

import pytest
import yaml

from flows import parameters
from flows.full import full_pipeline
from flows.parameters import (
    CLI_PARAMETERS,
    NAMES,
    PARAMETERS,
    Parameter,
    PipelineParams,
    build_parser,
    check_parameters,
    markdown_table,
    parse_args,
)
from recsys_core.errors import RecsysError

ROOT = Path(__file__).resolve().parent.parent

# The 21 parameters users know (README, deployments, `prefect deployment run -p`): none may disappear.
KNOWN = ("source data_dir sample_scale sample_seed protocol splits split_options models model_options device seed "
         "top_k until task_runner dask_address dask_workers threads sweep mlflow_tracking_uri registry_model "
         "promotion_margin").split()


def test_every_known_parameter_is_declared_once():
    assert sorted(NAMES) == sorted(KNOWN) and len(NAMES) == len(set(NAMES))


def test_the_flow_signature_is_the_declaration():
    signature = inspect.signature(full_pipeline.fn)
    assert list(signature.parameters) == list(NAMES)
    for p in PARAMETERS:
        given = signature.parameters[p.name]
        assert given.default == p.default and given.annotation == p.annotation, p.name
    defaults = PipelineParams()
    assert {p.name: getattr(defaults, p.name) for p in PARAMETERS} == {p.name: p.default for p in PARAMETERS}


def test_prefects_parameter_schema_has_every_parameter_with_its_default_and_help():
    schema = full_pipeline.parameters.model_dump()
    properties = schema["properties"]
    assert list(properties) == list(NAMES)
    for p in PARAMETERS:
        assert properties[p.name].get("default") == p.default, p.name
        assert properties[p.name]["description"] == p.help_text(), p.name
    assert properties["splits"]["type"] == "array" and properties["sample_scale"]["type"] == "number"
    assert not schema.get("required")


def test_the_command_line_is_the_declaration():
    parser = build_parser()
    options = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert list(options) == [p.name for p in CLI_PARAMETERS]
    for p in CLI_PARAMETERS:
        assert options[p.name].option_strings == [p.flag]
        assert options[p.name].default == p.default, p.name
        assert tuple(options[p.name].choices or ()) == tuple(p.choices or ()), p.name
    assert parse_args([]) == {p.name: p.default for p in CLI_PARAMETERS}


def test_the_commands_of_the_docs_parse_to_valid_parameters():
    """Every `python flows/full.py ...` command line of README.md and docs/ parses, and makes a valid
    ``PipelineParams``."""
    import shlex

    command = re.compile(r"^\s*(?:\.venv/bin/|\./setup\.sh && \.venv/bin/)?python flows/full\.py(?P<args>( .*)?)$",
                         re.MULTILINE)
    commands = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in command.finditer(doc.read_text()):
            args = shlex.split(match["args"], comments=True)
            if "--help" not in args and not any(a.startswith("[") for a in args):
                commands.append(args)
    assert len(commands) >= 20
    for args in commands:
        values = parse_args(args)
        values.pop("report_json")
        if values["dask_address"]:
            values["task_runner"] = "dask"
        if values["sweep"] not in (None, "default"):
            values["sweep"] = {"file": values["sweep"]}  # main reads the file; only its type matters here
        PipelineParams(**values)


def test_the_readme_table_is_generated_from_the_declaration():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("| option | default | meaning |")
    end = readme.index("<!-- end of the generated table -->")
    assert readme[start:end] == markdown_table(), "run: python flows/parameters.py --markdown, paste into README.md"


@pytest.mark.parametrize("values, says", [
    ({"modles": ["mf"]}, "name modles, which the pipeline has no parameter of; its parameters are source,"),
    ({"protocol": "weekly"}, "protocol must be one of netflix-time, time, leave-one-out, random, chrono, "
                             "netflix-probe, got 'weekly'"),
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda, got 'tpu'"),
    ({"splits": "N3M"}, "parameter splits must be a list of strings, got 'N3M'"),
    ({"top_k": "10"}, "parameter top_k must be an integer, got '10'"),
    ({"threads": True}, "parameter threads must be an integer or null, got True"),
    ({"split_options": [1]}, "parameter split_options must be an object or null, got [1]"),
])
def test_bad_parameters_are_one_sentence(values, says):
    with pytest.raises(RecsysError) as err:
        check_parameters(values, where="deployment x parameters")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_every_deployment_of_prefect_yaml_passes_the_checks(tmp_path):
    lines = parameters.check_deployments(ROOT / "prefect.yaml")
    names = [d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]]
    assert lines == [f"{ROOT / 'prefect.yaml'}: deployment {name}: parameters ok" for name in names] and names
    bad = tmp_path / "prefect.yaml"
    bad.write_text("deployments:\n  - name: weekly\n    parameters: {models: [mf], model_options: {mf: {lr: -1}}}\n")
    with pytest.raises(RecsysError, match="model mf: option lr must be above 0, got -1"):
        parameters.check_deployments(bad)
    bad.write_text("deployments:\n  - name: weekly\n    parameters: {model: mf}\n")
    with pytest.raises(RecsysError, match=r"prefect.yaml: deployment 'weekly' parameters name model, which the "):
        parameters.check_deployments(bad)


def test_an_old_spelling_is_accepted_with_a_deprecation_line(monkeypatch, caplog, capsys):
    """The mechanism a renamed parameter uses for one release: ``old`` in its declaration."""
    renamed = tuple(dataclasses.replace(p, old=("k",)) if p.name == "top_k" else p for p in PARAMETERS)
    monkeypatch.setattr(parameters, "PARAMETERS", renamed)
    monkeypatch.setattr(parameters, "CLI_PARAMETERS", (*renamed, parameters.REPORT_JSON))
    with caplog.at_level(logging.WARNING, logger="recsys_core.flow"):
        assert check_parameters({"k": 5}, where="deployment d").top_k == 5
    assert "deployment d: parameter k is deprecated, use top_k" in caplog.text
    with pytest.raises(RecsysError, match="give both k and top_k; keep top_k"):
        check_parameters({"k": 5, "top_k": 6})
    assert parse_args(["--k", "7"])["top_k"] == 7 and parse_args(["--k=8"])["top_k"] == 8
    assert "warning: --k is deprecated, use --top-k" in capsys.readouterr().err


def test_a_parameter_record_says_its_flag_and_plain_help():
    p = Parameter(name="data_dir", annotation=str, default="data", help="see [docs/x.md](docs/x.md), `a`",
                  group="data")
    assert p.flag == "--data-dir" and p.help_text() == "see docs/x.md, a" and p.default_markdown() == "`data`"
