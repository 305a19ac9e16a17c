"""`fmlab doctor --against-tamm` (`fmlab.lab.doctor.check_against_tamm`): the shipped assets pass it, and a
template that drifts from tamm's is caught."""

import pytest

pytest.importorskip("tamm")
import fmlab.data.chat_template as chat_template
from fmlab.checkpoints.assets import REPO_ASSETS
from fmlab.lab.doctor import FAIL, OK, check_against_tamm


def test_shipped_assets_match_tamm():
    rows = check_against_tamm(REPO_ASSETS)
    assert [(r.name, r.status) for r in rows] == [("tamm template", OK), ("tamm logits", OK)]
    assert "bit for bit" in rows[1].detail


def test_template_drift_is_a_failure(monkeypatch):
    monkeypatch.setattr(chat_template, "tojson", lambda obj: chat_template.json.dumps(obj, sort_keys=True))
    (row,) = check_against_tamm(REPO_ASSETS)
    assert (row.name, row.status) == ("tamm template", FAIL)
