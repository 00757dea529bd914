"""Shared text tooling (corpus reading, tokenizers that round-trip and travel in checkpoints) and length buckets."""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import RandomSampler, TensorDataset

from gru_suite.errors import UserError
from gru_suite.data import (
    LengthBucketSampler,
    ResumableRandomSampler,
    SeededRandomSampler,
    batch_loader,
    length_bucket_loader,
    resume_part_way,
)
from gru_suite.timeseries import read_csv_frame
from gru_suite.text import (
    decode_lines,
    encode_as_text,
    pad_ids,
    read_lines,
    read_table,
    readable_pieces,
    tokenizer_from_state,
    tokenizer_state,
    train_tokenizer,
)

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
    spaced = "the cat sat on the mat."
    for odd in ("\t", "\u2028", "\u0085", "\u00a0"):  # read as a space, not as unknown characters
        assert tokenizer.encode(spaced.replace(" ", odd)) == tokenizer.encode(spaced)
    ids = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert ids == [0, 1, 2, 3]


@pytest.mark.parametrize("kind", ["bpe", "unigram", "word"])
def test_special_tokens_written_in_a_text_are_text(kind):
    tokenizer = train_tokenizer(CORPUS, kind=kind, vocab_size=120, min_frequency=1)
    (ids,) = encode_as_text(tokenizer, ["the cat <pad> sat </s> on <s> the mat."])["input_ids"]
    marks = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    assert not marks & set(ids) and tokenizer.unk_token_id in ids  # a unigram model holds the marks as pieces
    plain = "the cat sat on the mat."
    assert encode_as_text(tokenizer, [plain])["input_ids"][0] == tokenizer.encode(plain, add_special_tokens=False)


def test_a_vocabulary_too_small_for_the_texts_is_a_user_error():
    with pytest.raises(UserError, match="cannot train the unigram tokenizer with vocab_size=5 on these texts: "):
        train_tokenizer(CORPUS, kind="unigram", vocab_size=5)


def test_word_tokenizer_maps_unseen_words_to_unk():
    tokenizer = train_tokenizer(CORPUS, kind="word", vocab_size=1000, min_frequency=1, lowercase=True)
    ids = tokenizer.encode("The cat sat on the zebra.")
    assert tokenizer.convert_ids_to_tokens(ids) == ["the", "cat", "sat", "on", "the", "<unk>", "."]


def test_readable_pieces_mark_word_continuations_not_word_starts():
    tokenizer = train_tokenizer(CORPUS, vocab_size=60, min_frequency=1)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode("the frisbee players") + [tokenizer.eos_token_id])
    shown = readable_pieces(pieces)
    assert len(shown) == len(pieces) and shown[-1] == "</s>" and all(shown)  # one label per piece, none empty
    words = [piece.lstrip("\u2581") for piece in " ".join(shown[:-1]).replace(" ##", "").split()]
    assert [w for w in words if w] == ["the", "frisbee", "players"]
    bare = ["\u2581the", "\u2581", "f", "r", "is", "\u2581p", "lay", "<unk>", "</s>"]  # "▁" alone starts a word
    assert readable_pieces(bare) == ["the", "\u2581", "f", "##r", "##is", "p", "##lay", "##<unk>", "</s>"]
    assert readable_pieces(["\u2581", "<unk>", "<unk>", "\u2581the"]) == ["\u2581", "<unk>", "##<unk>", "the"]
    assert readable_pieces(["the", "cat", "."]) == ["the", "cat", "."]  # word tokenizer: unchanged


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
    unnamed = tmp_path / "b.csv"  # packed, but named as plain text: named so, not as text that is not UTF-8
    unnamed.write_bytes(packed.read_bytes())
    with pytest.raises(UserError, match=r"b.csv: gzip-compressed, but not named .gz: rename it b.csv.gz, or unpack"):
        read_lines(unnamed)
    with pytest.raises(UserError, match=r"b.csv: gzip-compressed, but not named .gz"):
        read_csv_frame(unnamed)  # pandas reads a .csv as plain text


def test_gzip_data_on_stdin_is_unpacked(monkeypatch):
    lines = "eins\nzwei\n".encode()
    for data, expected in ((gzip.compress(lines), ["eins", "zwei"]), (lines, ["eins", "zwei"])):
        monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(data)))
        assert read_lines("-") == expected
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(gzip.compress(lines)[:-6])))
    with pytest.raises(UserError, match=r"<stdin>: gzip-compressed, but cannot be unpacked"):
        read_lines("-")


@pytest.mark.parametrize("data, lines", [
    (b"one\r\ntwo\r\n", ["one", "two"]),  # Windows line ends
    (b"one \r two\nthree\n", ["one \r two", "three"]),  # a lone carriage return inside a line is not a line end
    (b"one\rtwo\r", ["one", "two"]),  # old Mac line ends, in a file without any "\n"
    (b"one\rtwo", ["one", "two"]),  # old Mac line ends, the last line without one
    (b"one\n\nlast", ["one", "", "last"]),
    (b"one\n\n", ["one", ""]),  # an empty last line is a line
])
def test_lines_end_at_line_feeds(tmp_path, data, lines):
    (path := tmp_path / "a.txt").write_bytes(data)
    assert read_lines(path) == lines


def test_read_lines_names_the_line_that_is_not_utf8(tmp_path, caplog):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\nbad \xff byte\n" + b"\xfe\n" * 6)
    with pytest.raises(UserError, match=r"bad\.txt:3: not UTF-8"):
        read_lines(path)
    assert read_lines(path, encoding_errors="replace")[2] == "bad \ufffd byte"
    named = [r.getMessage() for r in caplog.records if "replaced with U+FFFD" in r.getMessage()]
    assert named[0].startswith(f"{path}:3: not UTF-8") and len(named) == 6  # five lines named, then a count
    assert named[-1] == f"{path}: 7 lines in all had bytes replaced with U+FFFD"
    with pytest.raises(UserError, match="no such file"):
        read_lines(tmp_path / "missing.txt")
    marked = tmp_path / "bom.txt"  # a byte-order mark goes, also from a line whose bytes are replaced
    marked.write_bytes(b"\xef\xbb\xbfhello \xff\n")
    with pytest.raises(UserError, match=r"bom\.txt:1: not UTF-8 \(invalid start byte at byte 9\)"):
        read_lines(marked)
    assert read_lines(marked, encoding_errors="replace") == ["hello \ufffd"]
    marked.write_bytes(b"\xef\xbb\xbfone\n\xef\xbb\xbftwo\n")  # two files put together with `cat`
    assert read_lines(marked) == ["one", "two"]


def test_pad_ids():
    padded, lengths = pad_ids([[5, 6, 7], [8]], pad_id=0)
    assert padded.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]


@pytest.mark.parametrize("shuffle", [True, False])
def test_length_buckets_cover_every_item_once_in_similar_lengths(shuffle):
    lengths = [(i * 37) % 101 for i in range(1000)]
    order = RandomSampler(lengths, generator=torch.Generator().manual_seed(0)) if shuffle else range(1000)
    sampler = LengthBucketSampler(order, 16, lengths=lengths, shuffle_batches=shuffle, pool_batches=8)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 15  # random batches of 16 would spread over ~90
    if shuffle:
        assert list(sampler) != batches  # a new order each epoch


def test_unshuffled_length_buckets_are_one_pool_in_length_order_and_drop_last_drops_the_short_batch():
    lengths = [5, 1, 4, 2, 3, 9, 7]
    sampler = LengthBucketSampler(range(7), 3, lengths=lengths)
    assert list(sampler) == [[1, 3, 4], [2, 0, 6], [5]] and len(sampler) == 3
    dropping = LengthBucketSampler(range(7), 3, drop_last=True, lengths=lengths)
    assert list(dropping) == [[1, 3, 4], [2, 0, 6]] and len(dropping) == 2


def test_shuffled_length_buckets_sort_each_pool_of_pool_batches_batches():
    lengths = [5, 0, 1, 2, 3, 4] * 4  # each pool of 6 sorted puts its first item last
    sampler = LengthBucketSampler(range(24), 2, lengths=lengths, shuffle_batches=True, pool_batches=3)
    expected = [batch for s in range(0, 24, 6) for batch in ((s + 1, s + 2), (s + 3, s + 4), (s + 5, s))]
    assert sorted(map(tuple, sampler)) == sorted(expected) and len(sampler) == 12


def test_unshuffled_length_buckets_of_more_than_a_pools_items_stay_one_pool():
    lengths = torch.randperm(500, generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthBucketSampler(range(500), 4, lengths=lengths)  # 50 batches of 4 would be a shuffled pool
    assert [i for batch in sampler for i in batch] == sorted(range(500), key=lengths.__getitem__)


@pytest.mark.parametrize("shuffle", [True, False])
def test_length_buckets_of_no_items_are_no_batches(shuffle):
    sampler = LengthBucketSampler(range(0), 4, lengths=[], shuffle_batches=shuffle)
    assert list(sampler) == [] and len(sampler) == 0


def test_a_length_bucket_loader_started_at_an_epoch_draws_that_epochs_batches_first():
    items, lengths = Numbers(torch.arange(40)), [i % 7 for i in range(40)]
    fresh = length_bucket_loader(items, lengths, 4, shuffle=True, seed=5)
    epochs = [list(fresh.batch_sampler) for _ in range(3)]
    assert epochs[0] != epochs[2]
    resumed = length_bucket_loader(items, lengths, 4, shuffle=True, seed=5, epoch=2)  # no set_epoch before it draws
    assert list(resumed.batch_sampler) == epochs[2]


def test_item_lengths_not_one_per_item_are_named():
    for lengths in ([1] * 39, [1] * 41):  # not an IndexError at the first batch, nor items left unbatched
        with pytest.raises(UserError, match=rf"^{len(lengths)} item lengths for a dataset of 40 items \(Numbers\): "
                                            r"the lengths \(SplitDataModule\(lengths=...\)\) must give one per item$"):
            length_bucket_loader(Numbers(torch.arange(40)), lengths, 4, shuffle=True)
    loader = length_bucket_loader(Numbers(torch.arange(40)), (i % 7 for i in range(40)), 4, shuffle=False)
    assert sorted(i for batch in loader.batch_sampler for i in batch) == list(range(40))  # a generator of lengths


def test_length_buckets_are_shuffled_anew_each_epoch_over_a_fixed_item_order():
    lengths = [(i * 37) % 101 for i in range(200)]
    sampler = LengthBucketSampler(range(200), 8, lengths=lengths, shuffle_batches=True, pool_batches=4, seed=5)
    epochs = [list(sampler) for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    assert sorted(map(tuple, epochs[0])) == sorted(map(tuple, epochs[1]))  # the same buckets, in another order
    again = LengthBucketSampler(range(200), 8, lengths=lengths, shuffle_batches=True, pool_batches=4, seed=5)
    assert [list(again) for _ in range(3)] == epochs  # drawn from the seed and the epoch


def test_the_resumable_sampler_draws_random_samplers_orders_and_resumes_one_part_way():
    items = range(50)
    torch.manual_seed(3)
    plain = [list(RandomSampler(items)) for _ in range(3)]
    after = torch.rand(2)
    torch.manual_seed(3)
    sampler = ResumableRandomSampler(items)
    orders, seeds = [], []
    for _ in range(3):
        orders.append(list(sampler))
        seeds.append(sampler.order_seed)
    assert orders == plain and torch.equal(torch.rand(2), after)  # the same draws from torch's generator
    state = torch.get_rng_state()
    sampler.resume(seeds[1], 20, state)
    torch.rand(5)  # drawn meanwhile (the loader's iterator): set back as the resumed order starts
    assert list(sampler) == plain[1][20:] and torch.equal(torch.get_rng_state(), state)
    assert list(sampler) != plain[1][20:] and sampler.order_seed != seeds[1]  # the next order is a new one


class Numbers(TensorDataset):
    """Numbers gathered a batch at a time, as the suite's loaders want."""

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return self.tensors[0][indices]


def test_a_loader_resumes_part_way_only_through_the_items_and_batches_it_was_saved_with():
    items = Numbers(torch.arange(50))
    position = {"batches": 2, "batch_size": 8, "items": 50, "order_seed": 123}
    for size in (8, 4):  # a smaller batch size: the loader ends before Lightning's count of batches does
        loader = batch_loader(items, size, shuffle=True)
        assert resume_part_way(loader, position)
        assert list(loader.sampler) == torch.randperm(50, generator=torch.Generator().manual_seed(123)).tolist()[16:]
    # a larger one: Lightning, counting 2 batches done, stops at the loader's length in batches of the new size (of
    # 16: 4, so 2 more, 32 of the 34 items left), leaving items out
    assert not resume_part_way(batch_loader(items, 16, shuffle=True), position)
    assert not resume_part_way(batch_loader(Numbers(torch.arange(49)), 8, shuffle=True), position)
    lengths = [1 + i % 7 for i in range(50)]
    assert resume_part_way(length_bucket_loader(items, lengths, 8, shuffle=True), position)
    assert not resume_part_way(length_bucket_loader(items, lengths, 4, shuffle=True), position)  # other buckets
    assert not resume_part_way(batch_loader(items, 8, shuffle=True), {**position, "batch_size": None})  # older


def test_a_seeded_sampler_draws_the_orders_of_a_run_from_its_first_epoch():
    items = range(50)
    plain = RandomSampler(items, generator=torch.Generator().manual_seed(7))
    orders = [list(plain) for _ in range(4)]  # one generator drawn epoch after epoch, as fresh runs always drew
    sampler = SeededRandomSampler(items, seed=7)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        assert list(sampler) == orders[epoch]
    resumed = SeededRandomSampler(items, seed=7)
    resumed.set_epoch(2)  # a run resumed at its third epoch
    assert list(resumed) == orders[2]
    sampler.set_epoch(1)  # sent back
    assert [list(sampler), list(sampler)] == orders[1:3]  # and on from there without set_epoch


def test_length_buckets_shard_under_a_distributed_sampler():
    from torch.utils.data import DistributedSampler

    lengths = [i % 23 for i in range(101)]
    seen = []
    for rank in (0, 1):
        shard = DistributedSampler(lengths, num_replicas=2, rank=rank, shuffle=True, seed=3)
        seen += [i for batch in LengthBucketSampler(shard, 8, lengths=lengths, shuffle_batches=True) for i in batch]
    assert set(seen) == set(range(101)) and len(seen) == 102  # one item repeated to even the shares


def test_length_bucket_loader_builds_whole_batches():
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitems__(self, indices):
            return pad_ids([[7] * (i + 1) for i in indices])

    loader = length_bucket_loader(Items(), [i + 1 for i in range(10)], batch_size=4, shuffle=False)
    assert [lengths.tolist() for _, lengths in loader] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_decode_lines_names_the_source():
    assert decode_lines([b"ok", b"fine"], "<stdin>") == ["ok", "fine"]
    with pytest.raises(UserError, match="task.data.encoding_errors must be 'error' or 'replace', got 'foo'"):
        decode_lines([b"ok"], "<stdin>", "foo")
    with pytest.raises(UserError, match=r"<stdin>:2: not UTF-8"):
        decode_lines([b"ok", b"\xc3("], "<stdin>")


def test_read_table_picks_columns_by_name_and_lists_them_when_wrong(tmp_path):
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text('id,text,label\n1,"good, really",pos\n\n2,bad,neg\n', encoding="utf-8")
    assert read_table(csv_path, ["text", "label"]) == [(2, ["good, really", "pos"]), (3, ["", ""]), (4, ["bad", "neg"])]
    tsv_path = tmp_path / "glue.tsv"
    tsv_path.write_text('sentence\tlabel\nit "works\t1\n', encoding="utf-8")
    assert read_table(tsv_path, ["sentence", "label"]) == [(2, ['it "works', "1"])]
    tsv_path.write_text("sentence\tlabel\t\nfine\t1\t\t\n", encoding="utf-8")  # trailing tabs
    assert read_table(tsv_path, ["sentence", "label"]) == [(2, ["fine", "1"])]
    columns = r"\['id', 'text', 'label'\]"
    with pytest.raises(UserError, match=rf"reviews\.csv:1: no column 'review'; the columns are {columns}"):
        read_table(csv_path, ["review"])
    csv_path.write_text("text,label,text\ngood,pos,OTHER 1\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"reviews\.csv:1: the header names column\(s\) 'text' more than once, so "
                                        r"which one to read is unclear; the columns are \['text', 'label', 'text'\]"):
        read_table(csv_path, ["text", "label"])
    assert read_table(csv_path, ["label"]) == [(2, ["pos"])]  # a column read once is clear
    gz_path = tmp_path / "glue.TSV.gz"  # gzipped, upper case: still tab-separated
    gz_path.write_bytes(gzip.compress("sentence\tlabel\na, b\t1\n".encode("utf-8")))
    assert read_table(gz_path, ["sentence", "label"]) == [(2, ["a, b", "1"])]
    long = "word, " * 40_000  # 240,000 characters, quoted: past the csv module's default field limit
    csv_path.write_text(f'text,label\n"{long}",pos\n', encoding="utf-8")
    assert read_table(csv_path, ["text", "label"]) == [(2, [long, "pos"])]
    assert csv.field_size_limit() == 131_072  # as it was


@pytest.mark.parametrize("content,message", [
    ("text,label\nonly text\n", r"bad\.csv:2: 1 field"),
    ("text,label\ngood,pos\nthe movie was great, really great .,pos\n",
     r"bad\.csv:3: 3 field\(s\), expected 2 .*quote a text that holds a comma"),
    ('text,label\nfine,pos\n"never closed,neg\nmore,pos\nend,neg\n', r"bad\.csv:3: not valid CSV"),
])
def test_read_table_names_the_row_whose_fields_are_wrong(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read_table(path, ["text", "label"])


def test_read_table_keeps_line_breaks_in_quoted_fields_and_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes('\ufefftext,label\n"great\nfilm .",pos\nbad,neg\n'.encode("utf-8"))
    assert read_table(path, ["text", "label"]) == [(2, ["great\nfilm .", "pos"]), (4, ["bad", "neg"])]
