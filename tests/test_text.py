"""Shared text tooling: corpus reading, tokenizers that round-trip and travel in checkpoints, length buckets."""

from __future__ import annotations

import gzip
import pickle

import pytest

from gru_suite.errors import UserError
from gru_suite.text import LengthBucketSampler, pad_ids, read_lines, tokenizer_from_state, tokenizer_state, train_tokenizer

CORPUS = [
    "Two young men are playing frisbee in the park.",
    "A dog runs through the snow, chasing a red ball!",
    "Zwei Männer stehen am Herd und kochen.",
    "the cat sat on the mat.",
] * 10


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_subword_tokenizer_round_trips(kind):
    tokenizer = train_tokenizer(CORPUS, kind=kind, vocab_size=120, min_frequency=1)
    for text in CORPUS[:4] + ["A red cat chasing young dogs in the park, unseen."]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode("Qatar")) == "<unk>atar"  # characters never seen in training
    ids = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert ids == [0, 1, 2, 3]


def test_word_tokenizer_maps_unseen_words_to_unk():
    tokenizer = train_tokenizer(CORPUS, kind="word", vocab_size=1000, min_frequency=1, lowercase=True)
    ids = tokenizer.encode("The cat sat on the zebra.")
    assert tokenizer.convert_ids_to_tokens(ids) == ["the", "cat", "sat", "on", "the", "<unk>", "."]


def test_tokenizer_travels_as_plain_data_and_saves_the_standard_way(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tokenizer = train_tokenizer(CORPUS, vocab_size=100, min_frequency=1)
    state = pickle.loads(pickle.dumps(tokenizer_state(tokenizer)))
    restored = tokenizer_from_state(state)
    assert restored.encode(CORPUS[1]) == tokenizer.encode(CORPUS[1])
    restored.save_pretrained(tmp_path)
    reloaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert reloaded.encode(CORPUS[2]) == tokenizer.encode(CORPUS[2]) and reloaded.pad_token == "<pad>"


def test_read_lines_plain_and_gzip(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_text("eins\nzwei\n\ndrei\n", encoding="utf-8")
    packed = tmp_path / "a.txt.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_lines(plain) == read_lines(packed) == ["eins", "zwei", "", "drei"]


def test_read_lines_names_the_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(UserError, match=r"bad\.txt:3: not UTF-8"):
        read_lines(path)
    with pytest.warns(UserWarning, match=r"bad\.txt:3"):
        assert read_lines(path, encoding_errors="replace")[2] == "bad \ufffd byte"
    with pytest.raises(UserError, match="no such file"):
        read_lines(tmp_path / "missing.txt")


def test_pad_ids():
    padded, lengths = pad_ids([[5, 6, 7], [8]], pad_id=0)
    assert padded.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]


@pytest.mark.parametrize("shuffle", [True, False])
def test_length_buckets_cover_every_item_once_in_similar_lengths(shuffle):
    lengths = [(i * 37) % 101 for i in range(1000)]
    sampler = LengthBucketSampler(lengths, batch_size=16, shuffle=shuffle, pool_batches=8)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 15  # random batches of 16 would spread over ~90
    if shuffle:
        assert list(sampler) != batches  # a new order each epoch
