"""Hostile and odd uploads against the HTTP app in process: the real upload reading and decoding
(serve_app/http, serve_app/imaging.py), with the fake model handle behind them.

Everything these cases exercise happens in the ingress, before any model call: the whole corpus
and Hypothesis' mutations run here in seconds. tests/test_hardening.py sends a sample of the same
cases end to end, under load, and checks no replica restarts.
"""

from __future__ import annotations

import pytest

from tests.fakes import client_for
from tests.hostile import corpus, send_cases, send_mutations

MUTATIONS = 1700


@pytest.fixture(scope="module")
def client():
    client, _, _ = client_for()
    with client:
        yield client


def refused(sent) -> int:
    return sum(n for status, n in sent.items() if 400 <= status < 500)


def test_every_case_of_the_corpus_gets_a_json_answer_and_odd_valid_images_are_classified(client, shared_images):
    sent = send_cases(client, "/v1/classify", corpus(shared_images))
    assert sent[200] >= 20 and refused(sent) >= 200, sent


def test_mangled_photos_sent_every_way_get_json_answers(client, shared_images):
    sent = send_mutations(client, "/v1/classify", [p.read_bytes() for p in shared_images[40:50]], MUTATIONS)
    assert sum(sent.values()) == MUTATIONS
    assert sent[200] > 100 and refused(sent) > 0.4 * MUTATIONS, sent
