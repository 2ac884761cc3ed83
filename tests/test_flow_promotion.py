"""The flow's registry step: a first run promotes its model, a re-run with nothing retrained keeps it, the
decision is a Prefect artifact and a line of the run summary."""

from __future__ import annotations

import json

import pytest

from recsys_core.errors import RecsysError
from recsys_core.registry import Registry
from tests.flow_support import prefect_sandbox

# Heavy (the whole flow with promotion under a Prefect test server): out of the fast lane (README), run by CI.
pytestmark = pytest.mark.slow

# The embedded default sample: on the smaller test sample no model beats the user+item bias baseline, so
# nothing could ever be promoted there; here the default autoencoder does after 10 epochs.
PARAMS = dict(model_options={"autoencoder": {"epochs": 10, "patience": 0}}, registry_model="sample-{split}")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with prefect_sandbox(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


def test_flow_promotes_then_keeps_an_unchanged_champion(api, tmp_path):
    import httpx

    from flows.full import full_pipeline
    from tasks.report import summary_markdown

    data = tmp_path / "data"
    first = full_pipeline(data_dir=str(data), **PARAMS)
    registry = Registry(data / "registry")
    assert registry.names() == ["sample-N3M"]
    [line] = first["promotion"]
    assert line.startswith("registry sample-N3M: PROMOTED as version 1: first champion: autoencoder"), line
    assert line in summary_markdown(first)
    champion = registry.champion("sample-N3M")
    assert champion.run_dir == first["artifacts"]["run N3M/autoencoder"]
    # the flow's run carries its content keys and the split's training dates
    assert champion.run.data_key and champion.run.code_key and champion.run.trained_on.first_date

    # (plain HTTP: the pinned client's read_artifacts sends nulls the pinned server rejects)
    artifact = httpx.get(f"{api}/artifacts/recsys-promotion-sample-n3m/latest", timeout=30).json()
    assert artifact["type"] == "table" and "PROMOTED" in artifact["description"]
    table = artifact["data"] if isinstance(artifact["data"], list) else json.loads(artifact["data"])
    assert {row["role"] for row in table} == {"challenger", "baseline"}

    second = full_pipeline(data_dir=str(data), **PARAMS)
    assert second["promotion"] == ["registry sample-N3M: KEPT the champion: the challenger is the champion's "
                                   "own run (nothing was retrained)"]
    assert len(registry.history("sample-N3M")) == 1


def test_one_registry_name_for_several_splits_needs_the_placeholder():
    from tasks.promotion import registry_names

    assert registry_names("netflix-{split}", ["N3M", "NF"]) == {"N3M": "netflix-N3M", "NF": "netflix-NF"}
    assert registry_names("netflix", ["N3M"]) == {"N3M": "netflix"}
    with pytest.raises(RecsysError, match=r"put \{split\} in the name"):
        registry_names("netflix", ["N3M", "NF"])
    with pytest.raises(RecsysError, match="registry model name"):
        registry_names("bad name/{split}", ["N3M"])


def test_bad_registry_options_are_refused_before_any_stage_runs(tmp_path):
    from flows.full import full_pipeline

    data = tmp_path / "data"
    with pytest.raises(RecsysError, match=r"registry_model 'bad name/\{split\}' must be"):
        full_pipeline.fn(data_dir=str(data), registry_model="bad name/{split}")
    with pytest.raises(RecsysError, match="promotion_margin must be"):
        full_pipeline.fn(data_dir=str(data), registry_model="sample-{split}", promotion_margin=-0.1)
    with pytest.raises(RecsysError, match=r"put \{split\} in the name"):
        full_pipeline.fn(data_dir=str(data), registry_model="sample", splits=["N3M", "NF"])
    assert not data.exists()
