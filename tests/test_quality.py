"""Answer quality: SQuAD's normalisation, exact match and token F1 on known cases."""

from __future__ import annotations

import pytest

from ragraph.quality import exact_match, normalize_answer, quality_summary, score, token_f1


def test_normalisation_is_squads():
    # lowercase, punctuation gone, articles (whole words only) gone, whitespace collapsed
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("Theater and Anatomy") == "theater and anatomy"  # "the"/"an" inside words stay
    assert normalize_answer("Saint-Denis") == "saintdenis"  # SQuAD deletes punctuation, it does not split on it


def test_squad_examples():
    # SQuAD v1.1 dev, "Super Bowl 50": gold answers "Denver Broncos" (x3)
    assert exact_match("the Denver Broncos", "Denver Broncos") == 1.0
    assert token_f1("the Denver Broncos", "Denver Broncos") == 1.0
    # a longer prediction: precision 2/3, recall 1 -> F1 0.8
    assert token_f1("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    assert exact_match("Denver Broncos won", "Denver Broncos") == 0.0
    # "Santa Clara, California" vs "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California"
    gold = "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California"
    # prediction 3 tokens, gold 11 after normalisation ("the" dropped, "Levi's" -> "levis"), overlap 3
    assert token_f1("Santa Clara, California", gold) == pytest.approx(2 * 1.0 * (3 / 11) / (1 + 3 / 11))


def test_overlap_is_a_multiset():
    # "cat cat" against "cat": one shared token, not two (precision 1/2, recall 1), as the official script
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)
    assert token_f1("cat cat", "cat cat") == 1.0
    assert token_f1("paris", "paris paris") == pytest.approx(2 / 3)


def test_no_overlap_and_empty_answers_score_zero():
    assert token_f1("Berlin", "Paris") == 0.0
    assert token_f1("", "Paris") == 0.0
    assert token_f1("the", "a") == 0.0  # both normalise to nothing: no token in common
    assert exact_match("", "Paris") == 0.0


def test_several_gold_answers_take_the_best():
    assert score("Paris", ["the city of Paris", "Paris"]) == (1.0, 1.0)
    f1, em = score("capital Paris", ["Paris", "France"])
    assert f1 == pytest.approx(2 / 3) and em == 0.0
    assert score("Paris", []) is None  # no gold answers: not scored


def test_summary_is_absent_without_gold_answers():
    assert quality_summary([]) is None
    assert quality_summary([("Paris", None, None), ("", None, None)]) is None
    q = quality_summary([("Paris", 1.0, 1.0), ("", 0.0, 0.0), ("Lyon", 0.5, 0.0), ("x", None, None)])
    assert q is not None
    assert q["scored"] == 3 and q["answered"] == 2
    assert q["f1_mean"] == pytest.approx(0.5) and q["em_mean"] == pytest.approx(1 / 3)
    assert q["f1_zero"] == pytest.approx(1 / 3) and q["f1_full"] == pytest.approx(1 / 3)
