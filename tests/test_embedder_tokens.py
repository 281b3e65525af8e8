"""Query embedding priced in the embedder's tokens: both bodies count as the embedder does, a
profile states whose tokens it prices, and an older per-character profile is refused."""

from __future__ import annotations

import json

import pytest

from hwmodel.embedder_tokens import DEFAULT_EMBEDDER, EmbedderUnavailable, token_counter
from hwmodel.latency import LatencyModel
from hwmodel.profile import DEFAULT_CPU_PROFILE, PROFILE_DIR, ProfileError, load_profile

# the same number of characters, far more tokens: names, numbers and punctuation split finely
QUESTION = "who wrote the novel that the film was based on?"  # 47 characters
PASSAGE_CUT = "Ångström (1814–74): \"Recherches\", 1853; p. 2-3."  # 47 characters


def test_the_count_is_the_embedders_own():
    pytest.importorskip("sentence_transformers")
    from backends.embedder import Embedder

    count = token_counter(DEFAULT_EMBEDDER)
    texts = [QUESTION, PASSAGE_CUT, "word " * 400]  # the last is cut at the model's 256 tokens
    model = Embedder()._model
    features = model.tokenize(texts)
    assert [count(t) for t in texts] == features["attention_mask"].sum(1).tolist()
    assert count("word " * 400) == model.max_seq_length == 256
    assert len(QUESTION) == len(PASSAGE_CUT) and count(PASSAGE_CUT) > 1.5 * count(QUESTION)


def test_a_call_is_priced_by_its_texts_tokens_not_their_characters():
    latency = LatencyModel(load_profile(DEFAULT_CPU_PROFILE))
    short, long = latency.text_tokens(QUESTION), latency.text_tokens(PASSAGE_CUT)
    m = latency.profile.cpu_search
    assert m.embed_token_s > 0
    assert latency.search_s(1, 1, 4, 400, long, long) - latency.search_s(1, 1, 4, 400, short, short) == \
        pytest.approx((m.embed_token_s + m.embed_text_token_s) * (long - short))


def test_a_profile_without_text_prices_counts_nothing():
    latency = LatencyModel(load_profile())  # the analytic H100 profile: a cost per query, not per token
    assert not latency.profile.cpu_search.prices_text and latency.text_tokens(PASSAGE_CUT) == 0


def _shipped(**cpu_search) -> dict:
    data = json.loads((PROFILE_DIR / f"{DEFAULT_CPU_PROFILE}.json").read_text())
    data["cpu_search"].update(cpu_search)
    return data


def test_a_per_character_profile_is_refused_with_the_command_that_fixes_it(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(_shipped(embed_char_s=4e-5)))
    with pytest.raises(ProfileError, match=r"old\.json: field cpu_search: .*embed_char_s.*hedra calibrate"):
        load_profile(path)


def test_a_per_token_profile_must_name_its_embedder(tmp_path):
    data = _shipped()
    data["index"]["embedder"] = None
    path = tmp_path / "nameless.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"index\.embedder: required"):
        load_profile(path)


def test_an_embedder_that_is_not_here_is_one_clear_error(tmp_path):
    with pytest.raises(EmbedderUnavailable, match="neither a folder nor in the local"):
        token_counter(str(tmp_path / "no-such-embedder"))
    data = _shipped()
    data["index"]["embedder"] = str(tmp_path / "no-such-embedder")
    profile = load_profile(_write(tmp_path / "elsewhere.json", data))
    with pytest.raises(ProfileError, match="prices the query embedding in tokens of"):
        LatencyModel(profile)


def _write(path, data):
    path.write_text(json.dumps(data))
    return path
