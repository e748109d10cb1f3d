"""Our VQA accuracy against the official evaluation file itself, on 4,000 fuzzed questions.

`fixtures/vqa_official_fuzz.json.gz` holds questions drawn to stress the answer normalisation and, for each,
the per-question accuracy computed by GT-Vision-Lab/VQA's `vqaEval.py` at the current commit and at the
pre-2021 one (`fixtures/make_vqa_official_fuzz.py` says how it was made). Every question must agree.
"""
import gzip, json
from pathlib import Path

import pytest

from scl_nb.metrics import VQA_RULES, vqa_accuracy, vqa_question_accuracy

FIXTURE = Path(__file__).parent / "fixtures" / "vqa_official_fuzz.json.gz"


@pytest.fixture(scope="module")
def fuzz():
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as f:
        return json.load(f)["questions"]


@pytest.mark.parametrize("rule", VQA_RULES)
def test_every_question_equals_the_official_file(fuzz, rule):
    wrong = [(q["prediction"], q["answers"], q[rule], vqa_question_accuracy(q["prediction"], q["answers"], rule))
             for q in fuzz if abs(vqa_question_accuracy(q["prediction"], q["answers"], rule) - q[rule]) > 1e-9]
    assert wrong == [], f"{len(wrong)} of {len(fuzz)} questions differ from the official file ({rule}); first: {wrong[:3]}"


def test_the_fixture_separates_the_rules(fuzz):
    "A set on which both rules agree everywhere could not tell a wrong default from a right one."
    differ = sum(abs(q["current"] - q["pre-2021"]) > 1e-9 for q in fuzz)
    assert len(fuzz) >= 4000 and differ > len(fuzz) // 4


def test_default_is_the_current_file(fuzz):
    preds, answers = [q["prediction"] for q in fuzz], [q["answers"] for q in fuzz]
    official = 100 * sum(q["current"] for q in fuzz) / len(fuzz)
    assert abs(vqa_accuracy(preds, answers) - official) < 1e-9
