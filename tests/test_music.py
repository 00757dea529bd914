"""The music task: MIDI <-> roll or events, models that learn, seeded and stateful generation, artifacts, bad input."""

from __future__ import annotations

import json
import logging
import re
import warnings
from functools import partial
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest
import torch
from omegaconf import DictConfig

from conftest import run_cli
from gru_suite import registry, run
from gru_suite.backbone import GRUBackbone
from gru_suite.checkpoint import load_checkpoint
from gru_suite.errors import UserError
from gru_suite.testing import check_task_plugin, compose_train_config
from gru_suite_plugins.music.data import (
    EventDataset,
    MidiWarning,
    RollDataset,
    load_corpus,
    midi_to_roll,
    read_events,
    read_folder,
    read_midi,
    split_pieces,
    to_range,
)
from gru_suite_plugins.music.events import (
    NOTE_OFF,
    NOTE_ON,
    SET_VELOCITY,
    TIME_SHIFT,
    VOCAB,
    decode,
    duration,
    encode,
    bin_velocity,
    transpose,
    velocity_bin,
)
from gru_suite_plugins.music.model import (
    AutoregressiveHead,
    EventModel,
    IndependentHead,
    MusicModel,
    Sampling,
    _draw,
    filter_logits,
    sample_events,
)
from gru_suite_plugins.music.synth import MAJOR, chorale, write_corpus
from gru_suite_plugins.music.task import EventRepresentation, RollRepresentation
from gru_suite_plugins.music import writer
from gru_suite_plugins.music.writer import roll_to_midi

HEADS = ["independent", "autoregressive"]
TINY = ["backbone.hidden_size=16", "task.model.embed_size=16", "task.model.head_units=32",
        "task.data.steps_per_beat=2", "task.generate.length=8"]


@pytest.fixture
def music_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the task as its entry point will, for checkouts where it is not installed yet."""
    installed = registry.installed_tasks()
    entry = registry.TaskEntry("music", "gru_suite_plugins.music.task:MusicTask", "gru-suite")
    monkeypatch.setattr(registry, "installed_tasks", lambda: {**installed, "music": installed.get("music", entry)})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder, pieces=6)
    return folder


def tiny_model(head: str, pitches: int, hidden: int = 32, **options: float | bool) -> MusicModel:
    torch.manual_seed(0)
    return MusicModel(partial(GRUBackbone, hidden_size=hidden), pitches, head, embed_size=16, head_units=32, **options)


def test_training_crops_cover_each_piece_to_its_last_step() -> None:
    dataset = EventDataset([torch.arange(10), torch.arange(16), torch.arange(3)], crop_steps=8)
    assert len(dataset) == 2 + 2 + 1  # ceil(n / 8) crops of each piece an epoch; a short piece gives itself
    torch.manual_seed(0)
    batch, lengths = dataset.__getitems__([0] * 200)
    assert set(batch[:, 0].tolist()) == {0, 1, 2} and lengths.tolist() == [8] * 200  # the last ends at step 9


def test_a_note_shorter_than_a_step_keeps_one_step_of_the_roll() -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)  # sixteenths of 0.125 s
    piano = pretty_midi.Instrument(0)
    piano.notes += [pretty_midi.Note(80, 60, 0.25, 0.27), pretty_midi.Note(80, 64, 0.5, 1.0)]
    pm.instruments.append(piano)
    roll = midi_to_roll(pm, 4)
    assert roll[:, 60].nonzero()[0].tolist() == [2] and roll[:, 64].nonzero()[0].tolist() == [4, 5, 6, 7]


def test_two_onsets_of_a_pitch_in_one_event_step_are_one_note_and_decode_lasts_as_asked() -> None:
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes += [pretty_midi.Note(80, 60, 0.0, 0.5), pretty_midi.Note(80, 60, 0.003, 0.5)]  # both on at 10 ms step 0
    pm.instruments.append(piano)
    events = encode(pm)
    assert events.count(NOTE_ON + 60) == 1 and events.count(NOTE_OFF + 60) == 1
    assert decode(events).get_end_time() == pytest.approx(0.5)
    assert decode(events, end=3.0).get_end_time() == pytest.approx(3.0)  # a piece asked to last 3 s does


def test_midi_roll_midi_round_trip_keeps_the_notes(tmp_path: Path) -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=90)
    piano, drums = pretty_midi.Instrument(0), pretty_midi.Instrument(0, is_drum=True)
    sixteenth = 60 / 90 / 4
    for pitch, on, steps in [(60, 0, 4), (64, 0, 2), (67, 2, 6), (48, 5, 11), (72, 9, 1), (60, 12, 4)]:
        piano.notes.append(pretty_midi.Note(80, pitch, on * sixteenth, (on + steps) * sixteenth))
    drums.notes.append(pretty_midi.Note(80, 36, 0, sixteenth))
    pm.instruments += [piano, drums]
    path = tmp_path / "in.mid"
    pm.write(str(path))

    roll = read_midi(path, steps_per_beat=4)
    assert roll.shape == (16, 128) and not roll[:, 36].any()
    assert roll[12:16, 60].all() and roll[:4, 60].all() and not roll[4:12, 60].any()
    back = roll_to_midi(roll[:, 40:80], low=40, steps_per_beat=4, tempo=90)
    expected = sorted((n.pitch, round(n.start, 4), round(n.end, 4)) for n in piano.notes)
    assert sorted((n.pitch, round(n.start, 4), round(n.end, 4)) for n in back.instruments[0].notes) == expected
    assert back.get_end_time() == pytest.approx(16 * sixteenth)
    np.testing.assert_array_equal(midi_to_roll(back, 4)[:, 40:80], roll[:, 40:80])


def test_a_written_roll_keeps_its_steps_in_triplets(tmp_path: Path) -> None:
    roll = np.zeros((6, 1), dtype=bool)
    roll[1:2, 0] = roll[4:6, 0] = True  # eighth-note triplets at 100 bpm: 0.2 s a step
    roll_to_midi(roll, low=60, steps_per_beat=3, tempo=100).write(str(path := tmp_path / "triplets.mid"))
    notes = pretty_midi.PrettyMIDI(str(path)).instruments[0].notes  # the tempo is whole microseconds a beat
    assert [(n.start, n.end) for n in notes] == [pytest.approx((0.2, 0.4), abs=1e-5),
                                                 pytest.approx((0.8, 1.2), abs=1e-5)]


def test_a_roll_that_ends_in_rests_keeps_its_length_in_the_midi_file() -> None:
    roll = np.zeros((16, 8), dtype=bool)
    roll[:4, 3] = True  # notes in the first beat, then three beats of rest
    pm = roll_to_midi(roll, low=60, steps_per_beat=4, tempo=120)
    assert pm.get_end_time() == pytest.approx(16 * 0.125)  # 16 sixteenths at 120 bpm, not the last note's end


def test_a_piece_that_ends_in_silence_keeps_it_as_events_and_as_a_roll() -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    piano = pretty_midi.Instrument(0)
    piano.notes.append(pretty_midi.Note(80, 60, 0.0, 0.5))
    piano.control_changes.append(pretty_midi.ControlChange(7, 100, 2.0))  # the file ends 1.5 s after the note
    pm.instruments.append(piano)
    assert pm.get_end_time() == 2.0
    events = encode(pm)
    assert duration(events) == pytest.approx(2.0) and decode(events).get_end_time() == pytest.approx(2.0)
    roll = midi_to_roll(pm, 4)  # 120 bpm: 8 sixteenths a second
    assert roll.shape == (16, 128) and roll[:4, 60].all() and not roll[4:].any()


def test_a_transposed_roll_keeps_every_note_in_range() -> None:
    full, inner = torch.zeros(4, 8), torch.zeros(4, 8)
    full[:, [0, 7]] = 1  # the lowest and highest pitch: no room to move
    inner[:, [2, 5]] = 1  # two semitones of room each way
    low = torch.zeros(4, 8)
    low[:, 1] = 1  # one semitone of room below, six above
    data = RollDataset([full, inner, low], transpose=3)
    torch.manual_seed(0)
    shifts, lows = set(), set()
    for _ in range(40):
        rolls, _ = data.__getitems__([0, 1, 2])
        shift = int(rolls[1].any(0).nonzero()[0]) - 2
        assert torch.equal(rolls[0], full) and torch.equal(rolls[1], torch.roll(inner, shift, dims=1))
        shifts.add(shift)
        lows.add(int(rolls[2].any(0).nonzero()[0]) - 1)
    assert shifts == {-2, -1, 0, 1, 2} and lows == {-1, 0, 1, 2, 3}


def test_velocity_bins_hold_four_velocities_each_and_decode_inside_their_bin() -> None:
    for velocity in range(1, 128):
        index = velocity_bin(velocity)
        assert 4 * index + 1 <= velocity <= 4 * index + 4
        assert velocity_bin(bin_velocity(index)) == index


@pytest.mark.parametrize("numerator,denominator", [(4, 4), (6, 8), (2, 2), (3, 8)])
def test_the_grid_counts_quarter_notes_whatever_the_time_signature(numerator: int, denominator: int) -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)  # pretty_midi's beats: dotted quarters in 6/8, halves in 2/2
    pm.time_signature_changes.append(pretty_midi.TimeSignature(numerator, denominator, 0))
    piano = pretty_midi.Instrument(0)
    piano.notes += [pretty_midi.Note(80, 60 + i % 2, i * 0.25, (i + 1) * 0.25) for i in range(12)]  # eighths
    pm.instruments.append(piano)
    roll = midi_to_roll(pm, steps_per_beat=4)
    assert len(roll) == 24 and np.flatnonzero(roll[:, 60]).tolist() == [s for i in range(0, 24, 4) for s in (i, i + 1)]


def test_bundled_corpus_is_deterministic_chorales(tmp_path: Path) -> None:
    first, second = write_corpus(tmp_path / "a", 2), write_corpus(tmp_path / "b", 2)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    roll = read_midi(first[0], steps_per_beat=2)
    assert len(roll) == 96 and set(roll.sum(1)) == {4}  # four voices throughout, passing tones in eighths


@pytest.mark.parametrize(("seed", "key"), [(1, 60), (2, 62), (3, 70), (4, 69)])
def test_a_bundled_chorale_stays_in_its_key_and_cadences_every_eight_beats(seed: int, key: int) -> None:
    notes = chorale(seed, key, beats=32, tempo=60.0).instruments[0].notes  # a beat a second
    assert all((note.pitch - key) % 12 in MAJOR for note in notes)  # passing tones too

    def bass(beat: float) -> int:
        return min(n.pitch for n in notes if n.start <= beat < n.end)

    for phrase in range(4):  # V on beat 6 of 8, then I on beats 7 and 8
        assert [(bass(8.0 * phrase + beat) - key) % 12 for beat in (5, 6, 7)] == [7, 0, 0]


@pytest.mark.parametrize("head", HEADS)
def test_model_overfits_a_tiny_piece(head: str) -> None:
    roll, _ = to_range(midi_to_roll(chorale(seed=1, key=60, beats=16), steps_per_beat=1), 40, 79)
    x, lengths = torch.from_numpy(roll).float()[None], torch.tensor([len(roll)])
    model = tiny_model(head, x.size(-1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.nll(x, lengths).mean().item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = model.nll(x, lengths).mean()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first


def test_autoregressive_head_sees_only_lower_pitches() -> None:
    head = AutoregressiveHead(hidden=8, pitches=10, units=16)
    notes = torch.rand(1, 10, requires_grad=True)
    for i in range(10):
        (grad,) = torch.autograd.grad(head.logits(torch.randn(1, 8), notes)[0, i], notes)
        assert not grad[0, i:].any() and (i == 0 or grad[0, :i].abs().sum() > 0)


@pytest.mark.parametrize("head", HEADS)
def test_sampling_with_a_seed_is_reproducible(head: str) -> None:
    model = tiny_model(head, 12).eval()
    sampling = Sampling(temperature=1.5, top_k=3, top_p=0.95)

    def sample(seed: int) -> torch.Tensor:
        return model.generate(3, 20, sampling, torch.Generator().manual_seed(seed))

    a, b, c = sample(7), sample(7), sample(8)
    assert a.shape == (3, 20, 12) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.sum(-1).max() <= 3 and a.sum() > 0


def record_steps(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The outputs of each `backbone.step` call, checking each gets one step of a batch of 2 and a carried state."""
    outputs, step = [], model.backbone.step

    def spy(x_t: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x_t.shape == (2, 16) and h is not None  # one step in, the carried state, never the past
        out, h = step(x_t, h)
        outputs.append(out)
        return out, h

    monkeypatch.setattr(model.backbone, "step", spy)
    return outputs


@pytest.mark.parametrize("head", HEADS)
def test_generation_carries_the_state_one_step_at_a_time(head: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(head, 12).eval()
    outputs = record_steps(model, monkeypatch)
    primer = torch.zeros(5, 12)
    primer[:, 3] = 1
    roll = model.generate(2, 30, Sampling(), torch.Generator().manual_seed(0), primer=primer)
    assert len(outputs) == 30 - 5 - 1 and torch.equal(roll[:, :5], primer.expand(2, -1, -1))
    with torch.no_grad():
        expected = model.hidden(roll)[:, 6:]  # outputs predicting steps 6..29
    torch.testing.assert_close(torch.stack(outputs, 1), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("field", ["dropout", "input_dropout"])
def test_a_dropout_outside_zero_to_one_is_a_user_error(field: str) -> None:
    with pytest.raises(UserError, match=rf"task.model.{field} must be in \[0, 1\), got 2"):
        tiny_model("independent", 12, **{field: 2})


def test_a_bidirectional_backbone_is_refused_before_training() -> None:
    both_ways = partial(GRUBackbone, hidden_size=8, bidirectional=True)  # it would see the notes it predicts
    for build in (lambda: MusicModel(both_ways, 12, "independent", embed_size=8), lambda: EventModel(both_ways)):
        with pytest.raises(UserError, match="task=music needs backbone.bidirectional=false"):
            build()


@pytest.mark.parametrize("head", HEADS)
def test_generation_with_the_input_skip_feeds_the_head_what_training_does(
    head: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_model(head, 12, input_skip=True, input_dropout=0.3).eval()
    assert model.hidden(torch.zeros(1, 4, 12)).shape == (1, 4, 32 + 12)
    head_inputs, sample = [], model.head.sample

    def spy(h: torch.Tensor, *args: object) -> torch.Tensor:
        head_inputs.append(h)
        return sample(h, *args)

    monkeypatch.setattr(model.head, "sample", spy)
    primer = torch.zeros(5, 12)
    primer[:, 3] = 1
    roll = model.generate(2, 30, Sampling(), torch.Generator().manual_seed(0), primer=primer)
    with torch.no_grad():
        expected = model.hidden(roll)[:, 5:]  # head inputs predicting steps 5..29
    assert torch.equal(expected[:, 0, 32:], primer[-1].expand(2, -1))  # the primer's last step, skipped past the GRU
    torch.testing.assert_close(torch.stack(head_inputs, 1), expected, atol=1e-5, rtol=1e-4)


def test_task_trains_and_predict_writes_midi_like_the_data(
    music_installed: None, corpus: Path, tmp_path: Path
) -> None:
    cfg = compose_train_config("music", [*TINY, f"task.data.path={corpus}", "backbone.hidden_size=32",
                                         "trainer.max_epochs=25", "optimizer.lr=1e-2", "logger=none",
                                         "callbacks.progress_bar=null", "task.generate.tempo=120",
                                         "task.generate.pieces=3"], tmp_path / "run")
    assert run.train(cfg)["val/loss"] < 11  # about 9.9; a model blind to the past stays above 12
    pieces = sorted((tmp_path / "run" / "predictions").glob("piece_*.mid"))
    assert [p.name for p in pieces] == ["piece_000.mid", "piece_001.mid", "piece_002.mid"]
    assert all(p.with_suffix(".png").read_bytes()[:4] == b"\x89PNG" for p in pieces)
    data = np.concatenate([read_midi(p, 2) for p in sorted(corpus.glob("*.mid"))])
    pitches = np.flatnonzero(data.any(0))
    for path in pieces:
        pm = pretty_midi.PrettyMIDI(str(path))
        assert pm.get_end_time() == pytest.approx(8 * 0.5)  # 8 beats at 120 bpm
        roll = midi_to_roll(pm, 2)
        assert roll.shape[0] == 16
        used = np.flatnonzero(roll.any(0))
        assert pitches[0] <= used[0] and used[-1] <= pitches[-1]
        assert 0.25 < roll.sum(1).mean() / data.sum(1).mean() < 4
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    other_grid = run_cli("gru-suite-predict", "task=music", f"ckpt_path={ckpt}", "task.data.steps_per_beat=1",
                         "task.generate.pieces=1", "task.generate.program=19", f"hydra.run.dir={tmp_path / 'grid'}")
    assert other_grid.returncode == 0, other_grid.stderr[-2000:]
    assert (f"{ckpt}: task.data.steps_per_beat fixed by training: the checkpoint's settings are used, not the "
            "override(s)") in other_grid.stdout + other_grid.stderr  # was silently ignored
    organ = pretty_midi.PrettyMIDI(str(tmp_path / "grid" / "piece_000.mid"))
    assert midi_to_roll(organ, 2).shape[0] == 16 and [i.program for i in organ.instruments] == [19]  # church organ


def test_primer_is_continued_and_must_fit(music_installed: None, corpus: Path, tmp_path: Path) -> None:
    primer = sorted(corpus.glob("*.mid"))[0]
    overrides = [*TINY, f"task.data.path={corpus}", f"task.generate.primer={primer}"]
    task = run.build_task(compose_train_config("music", [*overrides, "task.generate.length=64"], tmp_path).task)
    task.datamodule()
    model = run.build_module(compose_train_config("music", overrides, tmp_path), task).model.eval()
    rolls = task.predict_step(model, torch.tensor([0, 1]))["roll"]
    assert rolls.shape[1] == 128 and torch.equal(rolls[:, :96], task.primer.bool().expand(2, -1, -1))
    for beats, steps in ((30, 60), (48, 96)):  # as long as the primer: nothing left to generate
        cfg = compose_train_config("music", [*overrides, f"task.generate.length={beats}"], tmp_path)
        with pytest.raises(UserError, match=rf"primer .*chorale_00.mid is 96 steps long, not shorter than the "
                                            rf"requested length of {beats} beats \({steps} steps\), so nothing"):
            run.build_task(cfg.task).datamodule()


def test_a_primer_on_a_drum_track_is_read_when_drums_are(music_installed: None, corpus: Path, tmp_path: Path) -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    kit = pretty_midi.Instrument(0, is_drum=True)
    kit.notes += [pretty_midi.Note(80, 60, i * 0.5, i * 0.5 + 0.25) for i in range(4)]
    pm.instruments.append(kit)
    pm.write(str(primer := tmp_path / "drums.mid"))
    overrides = [*TINY, f"task.data.path={corpus}", f"task.generate.primer={primer}"]
    task = run.build_task(compose_train_config("music", [*overrides, "task.data.drums=true"], tmp_path).task)
    task.datamodule()
    assert task.primer.any()
    with pytest.raises(UserError, match=r"drums.mid: no notes \(drum tracks are ignored; task.data.drums=true reads "
                                        r"them\)"):
        run.build_task(compose_train_config("music", overrides, tmp_path).task).datamodule()


def test_corrupt_and_empty_midi_files_are_skipped_by_name(
    corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in sorted(corpus.glob("*.mid"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    pretty_midi.PrettyMIDI().write(str(folder / "silent.midi"))
    with caplog.at_level(logging.WARNING):
        splits = load_corpus(folder, 2, drums=False, split=[0.6, 0.2, 0.2])
    assert sum(map(len, splits.values())) == 3
    assert "broken.mid: not a readable MIDI file" in caplog.text and "silent.midi: no notes" in caplog.text
    for name, content, expected in (
            ("cut.mid", b"MThd\x00\x00", r"not a readable MIDI file \(EOFError: the file ends too early\)"),
            ("empty.mid", b"", r"not a MIDI file \(it does not start with a MIDI header, MThd\)"),
            ("notes.mid", b"C E G\n", r"not a MIDI file \(it does not start with a MIDI header, MThd\)")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=rf"{name}: {expected}"):
            read_midi(tmp_path / name, 2)
    assert "skipped 2 of 5 MIDI files" in caplog.text
    (tmp_path / "rolls.pickle").write_bytes(b"\x80\x04")  # JSB Chorales as first published: a Python pickle
    with pytest.raises(UserError, match=r"rolls.pickle: neither MIDI nor piano rolls in JSON \(a .json file"):
        load_corpus(tmp_path / "rolls.pickle", 2, drums=False, split=[0.6, 0.2, 0.2])
    for path in sorted(corpus.glob("*.mid"))[:3]:
        (folder / path.name).unlink()
    with pytest.raises(UserError, match=r"no usable MIDI files \(2 unusable: broken.mid, silent.midi\)"):
        load_corpus(folder, 2, drums=False, split=[0.6, 0.2, 0.2])


def test_pretty_midis_warnings_name_their_files(corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "tunes"
    folder.mkdir()
    for index, path in enumerate(sorted(corpus.glob("*.mid"))[:3]):
        tune = mido.MidiFile(path)
        if index:  # a tempo on the second track: pretty_midi warns that the tempo may be wrong
            tune.tracks[1].insert(0, mido.MetaMessage("set_tempo", tempo=600_000))
        tune.save(folder / path.name)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")  # none escapes the folder's report
        assert len(read_folder(folder, partial(read_midi, steps_per_beat=2))) == 3
    names = sorted(p.name for p in folder.glob("*.mid"))
    assert f"{folder}: 2 of 3 MIDI files: Tempo, Key or Time signature change events found on non-zero tracks." \
        in caplog.text and f"({names[1]}, {names[2]})" in caplog.text
    with pytest.warns(MidiWarning, match=f"{names[1]}: Tempo, Key or Time signature"):
        read_midi(folder / names[1], 2)


def test_the_splits_take_their_shares_of_the_pieces() -> None:
    pieces = [np.full((1, 128), i % 2, bool) for i in range(20)]
    sizes = lambda split: {k: len(v) for k, v in split_pieces(pieces, split, Path("p")).items()}  # noqa: E731
    assert sizes([0.8, 0.1, 0.1]) == {"train": 16, "valid": 2, "test": 2}
    assert sizes([0.5, 0.1, 0.1]) == {"train": 10, "valid": 2, "test": 2}  # six pieces left out
    assert sizes([0.9, 0.02, 0.02]) == {"train": 18, "valid": 1, "test": 1}  # at least one piece each
    split = split_pieces([np.zeros((i + 1, 128), bool) for i in range(20)], [0.8, 0.1, 0.1], Path("p"))
    assert sorted(len(piece) for part in split.values() for piece in part) == list(range(1, 21))  # each piece once
    assert [len(piece) for piece in split["train"]] != list(range(1, 17))  # a shuffle, not the files' order
    again = split_pieces([np.zeros((i + 1, 128), bool) for i in range(20)], [0.8, 0.1, 0.1], Path("p"))
    assert {k: [len(p) for p in v] for k, v in again.items()} == {k: [len(p) for p in v] for k, v in split.items()}
    with pytest.raises(UserError, match=r"p: 20 pieces leave none for training with split \[0.01, 0.1, 0.1\]"):
        sizes([0.01, 0.1, 0.1])


def test_json_rolls_without_a_note_are_one_clear_error(music_installed: None, tmp_path: Path) -> None:
    path = tmp_path / "rests.json"
    path.write_text(json.dumps({"train": [[[], []]], "valid": [[[]]], "test": [[[]]]}))
    task = run.build_task(compose_train_config("music", [*TINY, f"task.data.path={path}"], tmp_path).task)
    with pytest.raises(UserError, match=r"rests.json: no piece holds a note"):
        task.datamodule()


def test_roll_top_p_keeps_a_notes_likelier_outcome_once_it_holds_p() -> None:
    prob = torch.tensor([0.6, 0.69, 0.4, 0.2, 0.8]).repeat(2000, 1)
    greedy = _draw(prob, Sampling(top_p=0.3), torch.Generator().manual_seed(0)).mean(0)
    assert greedy.tolist() == [1, 1, 0, 0, 1]  # below 0.5 the likelier outcome always holds p
    nucleus = _draw(prob, Sampling(top_p=0.75), torch.Generator().manual_seed(0)).mean(0)
    assert nucleus[[3, 4]].tolist() == [0, 1] and torch.allclose(nucleus[:3], torch.tensor([0.6, 0.69, 0.4]), atol=0.05)


def test_json_pitch_out_of_range_is_one_clear_error(music_installed: None, tmp_path: Path) -> None:
    path = tmp_path / "rolls.json"
    path.write_text(json.dumps({"train": [[[60, 64], [130]]], "valid": [[[60]]]}))
    with pytest.raises(UserError, match=r"rolls.json: train piece 0, step 1: pitch 130 is out of range"):
        load_corpus(path, 1, drums=False, split=[0.8, 0.1, 0.1])
    path.write_text(json.dumps({"train": [[[60, 64], [62]]], "valid": [[[10]]]}))
    cfg = compose_train_config("music", [*TINY, f"task.data.path={path}", "task.data.pitch_range=piano"], tmp_path)
    with pytest.raises(UserError, match=r"valid piece 0, step 0: pitch 10 is out of range \(21-108"):
        run.build_task(cfg.task).datamodule()


def test_midi_whose_notes_all_lie_outside_the_models_range_is_refused(music_installed: None, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_train_config("music", [*TINY, f"task.data.path={tmp_path / 'high.mid'}"], tmp_path)
    rolls = RollRepresentation(cfg.task, {"low": 40, "high": 79, "steps_per_beat": 2})
    roll = np.zeros((4, 128), dtype=np.float32)
    roll[:, 100] = 1  # four note-steps at pitch 100
    with pytest.raises(UserError, match=r"high.mid: the test pieces have no notes inside the model's pitch range "
                                        r"40-79 \(all 4 "):
        rolls._ranged({"train": [np.eye(4, 128, 60, dtype=np.float32)], "test": [roll]})
    shared = [roll]  # fewer than three pieces: every split reads the same ones
    with pytest.raises(UserError, match=r"high.mid: the pieces have no notes inside the model's pitch range "
                                        r"40-79 \(all 4 "):  # not "the train pieces", in an evaluation
        rolls._ranged({"train": shared, "valid": shared, "test": shared})
    roll[0, 60] = roll[1, 79] = roll[2, 40] = 1
    assert int(rolls._ranged({"test": [roll]})["test"][0].sum()) == 3  # the notes in range are kept, the rest dropped
    with caplog.at_level(logging.WARNING):
        rolls._ranged({"train": shared, "valid": shared, "test": shared})
    assert "high.mid: dropped 4 note-steps outside the pitch range 40-79" in caplog.text  # counted once, not thrice
    assert to_range(roll, 40, 79)[1] == 4  # the four at pitch 100 fell outside, none at the range's ends


def test_a_generated_length_in_seconds_or_beats_is_read_at_the_generation_tempo(music_installed: None,
                                                                                 tmp_path: Path) -> None:
    def at(*settings: str) -> DictConfig:
        return compose_train_config("music", [*TINY, "task.generate.tempo=120", *settings], tmp_path).task

    rolls = RollRepresentation(at("task.generate.unit=seconds", "task.generate.length=2"), {"steps_per_beat": 4})
    assert rolls.generate_steps() == 16  # 2 s at 120 bpm: 4 beats of 4 steps
    events = EventRepresentation(at("task.model.representation=events", "task.generate.unit=beats",
                                    "task.generate.length=4"), {})
    assert events.length()["seconds"] == 2.0  # 4 beats at 120 bpm


@pytest.mark.parametrize("pitch", ["C4", 60.5, True])
def test_json_pitch_that_is_not_an_integer_is_named(pitch: object, tmp_path: Path) -> None:
    path = tmp_path / "rolls.json"
    path.write_text(json.dumps({"train": [[[60], [pitch]]], "valid": [[[60]]]}))
    message = f"rolls.json: train piece 0, step 1: expected an integer MIDI pitch 0-127, got {pitch!r}"
    with pytest.raises(UserError, match=re.escape(message)):
        load_corpus(path, 1, drums=False, split=[0.8, 0.1, 0.1])


def test_a_midi_file_named_json_is_named_so(tmp_path: Path) -> None:
    path = tmp_path / "song.json"
    pretty_midi.PrettyMIDI().write(str(path))
    with pytest.raises(UserError, match=r"song.json: a MIDI file, named .json: name it .mid"):
        load_corpus(path, 1, drums=False, split=[0.8, 0.1, 0.1])


@pytest.mark.parametrize("mark", ["", "\ufeff"])  # as some editors save UTF-8: with a byte-order mark
def test_json_pitches_written_as_whole_floats_are_read(mark: str, tmp_path: Path) -> None:
    path = tmp_path / "rolls.json"  # as the 16th-note JSB Chorales file writes some of them
    path.write_text(mark + json.dumps({"train": [[[60.0], [64, 67.0]]], "valid": [[[60]]]}), encoding="utf-8")
    corpus = load_corpus(path, 1, drums=False, split=[0.8, 0.1, 0.1])
    assert [tuple(map(int, step)) for step in zip(*corpus["train"][0].nonzero())] == [(0, 60), (1, 64), (1, 67)]


@pytest.mark.parametrize("override,message", [
    ("task.data.steps_per_beat=0", "task.data.steps_per_beat must be at least 1, got 0"),
    ("task.data.transpose=-1", "task.data.transpose must be at least 0, got -1"),
    ("task.generate.program=300", "task.generate.program must be between 0 and 127, got 300"),
    ("task.generate.program=-1", "task.generate.program must be between 0 and 127, got -1"),
    ("task.generate.velocity=200", "task.generate.velocity must be between 1 and 127, got 200"),
    ("task.generate.velocity=0", "task.generate.velocity must be between 1 and 127, got 0"),
    ("task.generate.tempo=2.5", "task.generate.tempo must be between 3.6 and 60000000, got 2.5"),
    ("task.generate.tempo=1e8", "task.generate.tempo must be between 3.6 and 60000000, got 100000000.0"),
])
def test_a_setting_outside_its_midi_range_fails_when_the_task_is_built(
    override: str, message: str, music_installed: None, tmp_path: Path
) -> None:
    cfg = compose_train_config("music", [*TINY, override], tmp_path)
    state = {"representation": "roll", "low": 60, "high": 72, "steps_per_beat": 2}  # as a checkpoint restores it
    for restored in (None, state):
        with pytest.raises(UserError, match=re.escape(message)):
            run.build_task(cfg.task, restored)


def test_wrong_generation_settings_are_named_together_when_the_task_is_built(music_installed: None,
                                                                            tmp_path: Path) -> None:
    wrong = ["task.generate.program=200", "task.generate.temperature=0", "task.generate.top_p=1.5",
             "task.generate.unit=bars", "task.generate.max_note_s=-1"]
    cfg = compose_train_config("music", [*TINY, *wrong], tmp_path)
    with pytest.raises(UserError) as caught:
        run.build_task(cfg.task)
    assert str(caught.value).splitlines() == [
        "5 settings are wrong:", "  task.generate.program must be between 0 and 127, got 200",
        "  task.generate.unit must be one of ['steps', 'beats', 'seconds'], got 'bars'",
        "  task.generate.temperature must be positive, got 0",
        "  task.generate.top_p must be in (0, 1] (or null), got 1.5",
        "  task.generate.max_note_s must be positive (or null), got -1"]
    fine = compose_train_config("music", [*TINY, "task.generate.temperature='0.5'", "task.generate.top_p=null"],
                                tmp_path)
    sampling = run.build_task(fine.task).representation.sampling()
    assert sampling.temperature == 0.5 and sampling.top_p is None  # the quoted number is stored as one


def test_an_event_length_under_one_event_is_refused(music_installed: None, tmp_path: Path) -> None:
    cfg = compose_train_config("music", [*EVENTS, "task.generate.unit=steps", "task.generate.length=0.5"], tmp_path)
    with pytest.raises(UserError, match=re.escape("task.generate.length=0.5 steps is less than one event")):
        run.build_task(cfg.task).representation.length()  # not 0 events, written as a silent piece


def test_music_honours_the_plugin_contract(music_installed: None, corpus: Path, tmp_path: Path) -> None:
    check_task_plugin("music", [*TINY, f"task.data.path={corpus}"], tmp_path)


# --- the event representation (Performance RNN) ---------------------------------------------------------------

EVENTS = ["task.model.representation=events", "backbone.hidden_size=32", "task.model.embed_size=16",
          "task.data.crop_steps=64", "task.generate.unit=seconds", "task.generate.length=2"]


def tiny_event_model(hidden: int = 32) -> EventModel:
    torch.manual_seed(0)
    return EventModel(partial(GRUBackbone, hidden_size=hidden), embed_size=16)


def performance() -> pretty_midi.PrettyMIDI:
    """Two overlapping instruments, velocities in several bins, a gap over a second, and drums."""
    pm = pretty_midi.PrettyMIDI()
    piano, strings, drums = (pretty_midi.Instrument(0), pretty_midi.Instrument(48),
                             pretty_midi.Instrument(0, is_drum=True))
    piano.notes += [pretty_midi.Note(100, 60, 0.0, 0.5), pretty_midi.Note(30, 64, 0.123, 0.456),
                    pretty_midi.Note(127, 67, 0.5, 3.2), pretty_midi.Note(1, 60, 2.0, 2.004)]
    strings.notes += [pretty_midi.Note(70, 48, 0.25, 1.75), pretty_midi.Note(71, 72, 1.75, 4.0)]
    drums.notes.append(pretty_midi.Note(90, 36, 0.0, 0.1))
    pm.instruments += [piano, strings, drums]
    return pm


def note_tuples(pm: pretty_midi.PrettyMIDI, drums: bool = False) -> list[tuple[int, int, float, float]]:
    return sorted((n.pitch, velocity_bin(n.velocity), n.start, n.end)
                  for inst in pm.instruments if drums or not inst.is_drum for n in inst.notes)


def test_events_round_trip_keeps_the_notes() -> None:
    pm = performance()
    events = encode(pm)
    assert all(0 <= e < VOCAB for e in events) and VOCAB == 388
    back = decode(events, program=19)
    assert back.instruments[0].program == 19 and len(back.instruments) == 1
    got, expected = note_tuples(back), note_tuples(pm)
    assert [g[:2] for g in got] == [e[:2] for e in expected]  # pitch and velocity bin
    for (_, _, start, end), (_, _, want_start, want_end) in zip(got, expected):
        assert abs(start - want_start) <= 0.01 and abs(end - want_end) <= 0.011  # the 4 ms note lasts 10 ms
    assert back.get_end_time() == pytest.approx(4.0)
    assert duration(events) == pytest.approx(4.0)
    assert encode(back) == events  # a decoded performance encodes to the same events
    assert [n.pitch for n in decode(encode(pm, drums=True)).instruments[0].notes].count(36) == 1


def test_a_written_performance_keeps_its_times(tmp_path: Path) -> None:
    events = [NOTE_ON + 60, TIME_SHIFT + 99, TIME_SHIFT + 24, NOTE_OFF + 60, NOTE_ON + 62, TIME_SHIFT + 0]
    decode(events, tempo=90).write(str(path := tmp_path / "performance.mid"))
    notes = pretty_midi.PrettyMIDI(str(path)).instruments[0].notes  # the tempo is whole microseconds a beat
    assert [(n.pitch, n.start, n.end) for n in notes] == [(60, 0.0, pytest.approx(1.25, abs=1e-5)),
                                                          (62, pytest.approx(1.25, abs=1e-5),
                                                           pytest.approx(1.26, abs=1e-5))]


def test_decode_closes_dangling_notes_and_transposition_shifts_pitches() -> None:
    events = [SET_VELOCITY + 20, NOTE_ON + 60, NOTE_ON + 125, TIME_SHIFT + 49, NOTE_OFF + 60, NOTE_ON + 3,
              TIME_SHIFT + 99]
    notes = decode(events).instruments[0].notes
    assert [(n.pitch, n.start, n.end, velocity_bin(n.velocity)) for n in notes] == [
        (60, 0.0, 0.5, 20), (125, 0.0, 1.5, 20), (3, 0.5, 1.5, 20)]  # 125 and 3 closed at the end
    capped = decode(events, max_note_s=1.2).instruments[0].notes  # a note never released stops after 1.2 s
    assert [(n.pitch, n.start, n.end) for n in capped] == [(60, 0.0, 0.5), (125, 0.0, 1.2), (3, 0.5, 1.5)]
    up = transpose(events, 5)
    assert up.tolist() == [SET_VELOCITY + 20, NOTE_ON + 65, TIME_SHIFT + 49, NOTE_OFF + 65, NOTE_ON + 8,
                           TIME_SHIFT + 99]  # 125 + 5 is no MIDI pitch: dropped
    assert transpose([NOTE_ON + 125], 2).tolist() == [NOTE_ON + 127] and transpose([NOTE_ON + 125], 3).size == 0
    assert transpose(events, -4).tolist() == [SET_VELOCITY + 20, NOTE_ON + 56, NOTE_ON + 121, TIME_SHIFT + 49,
                                              NOTE_OFF + 56, TIME_SHIFT + 99]
    piece = torch.from_numpy(transpose(encode(performance()), 0))
    torch.manual_seed(0)
    batch, lengths = EventDataset([piece], crop_steps=None, transpose=3).__getitems__([0])
    shift = {int(a) - int(b) for a, b in zip(batch[0], piece) if a < TIME_SHIFT}
    assert len(shift) == 1 and abs(shift.pop()) <= 3 and lengths.tolist() == [len(piece)]


def test_event_model_overfits_a_tiny_piece() -> None:
    events = torch.tensor(encode(chorale(seed=1, key=60, beats=8)))[None]
    lengths = torch.tensor([events.size(1)])
    model = tiny_event_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.nll(events, lengths).mean().item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = model.nll(events, lengths).mean()
        loss.backward()
        optimizer.step()
    assert first > 5 and loss.item() < 0.1 * first


@pytest.mark.parametrize("build", [lambda: tiny_model("independent", 12), lambda: tiny_model("autoregressive", 12),
                                   lambda: tiny_event_model()], ids=["independent", "autoregressive", "events"])
def test_a_padded_pieces_loss_is_zero_past_its_length_and_its_own_before(build) -> None:
    model = build().eval()
    pieces = (torch.rand(2, 10, 12) > 0.7).float() if isinstance(model, MusicModel) else torch.randint(0, 20, (2, 10))
    with torch.no_grad():
        nll = model.nll(pieces, torch.tensor([10, 6]))
        alone = model.nll(pieces[1:, :6], torch.tensor([6]))
    assert (nll[1, 6:] == 0).all() and (nll[0] > 0).all()
    torch.testing.assert_close(nll[1, :6], alone[0])


def test_the_autoregressive_heads_temperature_divides_its_logits() -> None:
    torch.manual_seed(0)
    head = AutoregressiveHead(4, 6, 16)
    h = torch.randn(3, 4)
    greedy = torch.zeros(3, 6)
    with torch.no_grad():
        for i in range(6):  # pitch by pitch from the lowest, each given the notes chosen below it
            greedy[:, i] = (head.logits(h, greedy)[:, i] > 0).float()
        for seed in range(3):  # a cold draw is the likeliest note at every pitch
            assert head.sample(h, Sampling(temperature=1e-6), torch.Generator().manual_seed(seed)).equal(greedy)
        lowest = torch.sigmoid(head.logits(h[:1], greedy[:1])[0, 0] / 2)  # the lowest pitch depends on h alone
        warm = head.sample(h[:1].expand(4000, -1), Sampling(temperature=2.0), torch.Generator().manual_seed(0))
    assert warm[:, 0].mean().item() == pytest.approx(lowest.item(), abs=0.03)


def test_roll_top_k_keeps_the_likeliest_pitches() -> None:
    head = IndependentHead(1, 4)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.logit(torch.tensor([0.9, 0.8, 0.1, 0.05])))
    notes = head.sample(torch.zeros(500, 1), Sampling(top_k=2), torch.Generator().manual_seed(0))
    assert notes[:, 2:].sum() == 0
    torch.testing.assert_close(notes[:, :2].mean(0), torch.tensor([0.9, 0.8]), atol=0.06, rtol=0)


def test_event_sampling_is_seeded_and_top_k_top_p_restrict_the_choice() -> None:
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(filter_logits(logits, top_p=0.75)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(filter_logits(logits, top_p=0.85)).tolist() == [[False, True, True, True]]
    assert torch.isfinite(filter_logits(logits, top_k=3, top_p=1.0)).sum() == 3
    generator = torch.Generator().manual_seed(0)
    draws = sample_events(logits.expand(500, -1), Sampling(top_p=0.75), generator)
    assert set(draws.tolist()) == {1, 3}
    draws = sample_events(logits.expand(500, -1), Sampling(temperature=0.5, top_k=3), generator)
    assert set(draws.tolist()) == {1, 2, 3}
    draws = sample_events(logits.expand(8000, -1), Sampling(temperature=2.0), generator)  # flatter: logits / 2
    shares = torch.bincount(draws, minlength=4) / 8000
    torch.testing.assert_close(shares, (logits[0] / 2).softmax(-1), atol=0.02, rtol=0)

    model = tiny_event_model().eval()

    def sample(seed: int, sampling: Sampling = Sampling(temperature=1.5)) -> list[list[int]]:
        return model.generate(3, sampling, torch.Generator().manual_seed(seed), max_events=40)

    a, b, c = sample(7), sample(7), sample(8)
    assert a == b and a != c and [len(s) for s in a] == [40] * 3
    greedy = sample(7, Sampling(top_k=1))
    assert greedy == sample(8, Sampling(top_k=1)) == sample(9, Sampling(top_p=1e-6))  # only the likeliest event


def test_event_generation_steps_equal_the_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_event_model().eval()
    outputs = record_steps(model, monkeypatch)
    primer = [SET_VELOCITY + 10, NOTE_ON + 60, TIME_SHIFT + 9, NOTE_OFF + 60]
    pieces = model.generate(2, Sampling(), torch.Generator().manual_seed(0), primer, max_events=30)
    assert [p[:4] for p in pieces] == [primer, primer] and len(outputs) == 30 - 4 - 1
    with torch.no_grad():
        expected = model.hidden(torch.tensor(pieces))[:, 5:]  # outputs predicting events 5..29
    torch.testing.assert_close(torch.stack(outputs, 1), expected, atol=1e-5, rtol=1e-4)

    timed = model.generate(2, Sampling(), torch.Generator().manual_seed(0), primer, seconds=1.5)
    assert [duration(p) for p in timed] == [1.5, 1.5]


def test_event_task_trains_and_predict_writes_midi_of_the_requested_seconds(
    music_installed: None, corpus: Path, tmp_path: Path
) -> None:
    cfg = compose_train_config("music", [*EVENTS, f"task.data.path={corpus}", "trainer.max_epochs=3",
                                         "optimizer.lr=1e-2", "logger=none", "callbacks.progress_bar=null",
                                         "task.generate.length=3", "task.generate.pieces=2",
                                         "task.generate.program=19"], tmp_path / "run")
    metrics = run.train(cfg)
    assert metrics["test/perplexity"] == pytest.approx(np.exp(metrics["test/loss"]), rel=1e-4)
    assert metrics["val/loss"] < 5.0  # under log(388), uniform; and under 5.8, which a model blind to the past reaches
    pieces = sorted((tmp_path / "run" / "predictions").glob("piece_*.mid"))
    assert [p.name for p in pieces] == ["piece_000.mid", "piece_001.mid"]
    assert all(p.with_suffix(".png").read_bytes()[:4] == b"\x89PNG" for p in pieces)
    for path in pieces:
        pm = pretty_midi.PrettyMIDI(str(path))
        assert pm.get_end_time() == pytest.approx(3.0, abs=0.011)
        assert pm.instruments[0].program == 19 and pm.instruments[0].notes
    restored = load_checkpoint(next((tmp_path / "run").rglob("last.ckpt")))
    assert restored.task.state["representation"] == "events" and restored.task.state["vocab_size"] == 388
    assert isinstance(restored.model, EventModel)


@pytest.mark.parametrize("representation, length, at", [([], 16, (0.0, 6.0)), (EVENTS, 8, (0.0, 3.0))],
                         ids=["roll", "events"])
def test_a_primers_time_and_key_signatures_are_carried_into_the_pieces(
        representation: list[str], length: int, at: tuple[float, float], music_installed: None, corpus: Path,
        tmp_path: Path) -> None:
    """A waltz primer gives pieces in 3/4 (then its change to 6/8) and in its key: on its beats for rolls (here at
    60 bpm, the primer's 120), at its seconds for performances."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    piano = pretty_midi.Instrument(0)
    piano.notes += [pretty_midi.Note(80, 60 + i % 8, i * 0.5, i * 0.5 + 0.5) for i in range(8)]
    pm.instruments.append(piano)
    pm.time_signature_changes += [pretty_midi.TimeSignature(3, 4, 0.0), pretty_midi.TimeSignature(6, 8, 3.0)]
    pm.key_signature_changes.append(pretty_midi.KeySignature(2, 0.0))  # D major
    pm.write(str(primer := tmp_path / "waltz.mid"))
    cfg = compose_train_config("music", [*TINY, *representation, f"task.data.path={corpus}", "task.generate.pieces=1",
                                         f"task.generate.primer={primer}", "task.generate.tempo=60",
                                         f"task.generate.length={length}"], tmp_path)
    task = run.build_task(cfg.task)
    datamodule = task.datamodule()
    model = run.build_module(cfg, task).model.eval()
    task.write_predictions([task.predict_step(model, torch.tensor([0]))], datamodule, tmp_path / "out")
    piece = pretty_midi.PrettyMIDI(str(tmp_path / "out" / "piece_000.mid"))
    assert [(s.numerator, s.denominator) for s in piece.time_signature_changes] == [(3, 4), (6, 8)]
    assert [s.time for s in piece.time_signature_changes] == pytest.approx(at, abs=0.01)
    assert [(k.key_number, k.time) for k in piece.key_signature_changes] == [(2, 0.0)]


def test_event_primer_is_continued_and_must_fit(music_installed: None, corpus: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    primer = sorted(corpus.glob("*.mid"))[0]  # 48 beats at 96 bpm: 30 s
    overrides = [*EVENTS, f"task.data.path={corpus}", f"task.generate.primer={primer}", "task.generate.length=31"]
    cfg = compose_train_config("music", overrides, tmp_path)
    task = run.build_task(cfg.task)
    task.datamodule()
    model = run.build_module(cfg, task).model.eval()
    out = task.predict_step(model, torch.tensor([0, 1]))
    expected = read_events(primer).tolist()
    assert task.primer == expected
    for events, n in zip(out["events"], out["lengths"].tolist()):
        assert events[:len(expected)].tolist() == expected and duration(events[:n].tolist()) == pytest.approx(31)
    short = compose_train_config("music", [*overrides, "task.generate.length=20"], tmp_path)
    with pytest.raises(UserError, match=r"primer .*chorale_00.mid lasts 30.00 s, not shorter than .* 20.00 s, so "
                                        "nothing would be generated"):
        run.build_task(short.task).datamodule()
    both = compose_train_config("music", [*overrides, "task.generate.length=20",
                                          f"task.generate.max_events={len(expected)}"], tmp_path)
    with pytest.raises(UserError, match=r"lasts 30.00 s, not shorter than .* \(raise task.generate.length\)"):
        run.build_task(both.task).datamodule()  # what to raise first: the cap would be the next error
    capped = compose_train_config("music", [*overrides, f"task.generate.max_events={len(expected)}"], tmp_path)
    with pytest.raises(UserError, match=rf"primer .*chorale_00.mid is {len(expected)} events long, not shorter than "
                                        rf"the task.generate.max_events cap of {len(expected)} events, so nothing "
                                        r"would be generated \(raise task.generate.max_events\)"):
        run.build_task(capped.task).datamodule()
    capped = compose_train_config("music", [*overrides, f"task.generate.max_events={len(expected) + 3}"], tmp_path)
    task = run.build_task(capped.task)
    datamodule = task.datamodule()
    with caplog.at_level(logging.WARNING):
        task.write_predictions([task.predict_step(model, torch.tensor([0]))], datamodule, tmp_path / "capped")
    assert f"piece_000.mid: stopped at task.generate.max_events={len(expected) + 3} events after" in caplog.text
    json_data = compose_train_config("music", [*EVENTS, f"task.data.path={tmp_path / 'rolls.json'}"], tmp_path)
    with pytest.raises(UserError, match=r"rolls.json: task.model.representation=events reads MIDI files"):
        run.build_task(json_data.task).datamodule()


@pytest.mark.parametrize("settings", [[*TINY, "task.generate.length=64"], [*EVENTS, "task.generate.length=31"]],
                         ids=["roll", "events"])
def test_a_primers_file_is_read_once(settings: list[str], music_installed: None, corpus: Path, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """Its notes and its signatures come from one read, so what pretty_midi says of the file is said once, in one
    line of the run's log."""
    tune = mido.MidiFile(sorted(corpus.glob("*.mid"))[0])
    tune.tracks[1].insert(0, mido.MetaMessage("set_tempo", tempo=600_000))
    tune.save(primer := tmp_path / "primer.mid")
    cfg = compose_train_config("music", [*settings, f"task.data.path={corpus}", f"task.generate.primer={primer}"],
                               tmp_path)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        run.build_task(cfg.task).datamodule()
    assert not [w for w in caught if issubclass(w.category, MidiWarning)]
    assert [r.getMessage() for r in caplog.records if str(primer) in r.getMessage()] == [
        f"{primer}: Tempo, Key or Time signature change events found on non-zero tracks. This is not a valid type 0 "
        "or type 1 MIDI file. Tempo, Key or Time Signature may be wrong."]


def test_music_events_honours_the_plugin_contract(music_installed: None, corpus: Path, tmp_path: Path) -> None:
    check_task_plugin("music", [*EVENTS, f"task.data.path={corpus}"], tmp_path)


def test_a_silent_generated_piece_is_written_with_a_warning(music_installed: None, corpus: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    task = run.build_task(compose_train_config("music", [*TINY, f"task.data.path={corpus}"], tmp_path).task)
    task.datamodule()
    rolls = torch.zeros(2, 16, task.state["high"] - task.state["low"] + 1, dtype=torch.bool)
    rolls[1, 0, 0] = True
    paths = task.write_predictions([{"index": torch.tensor([0, 1]), "roll": rolls}], None, tmp_path / "out")
    assert len(paths) == 4  # each piece's .mid and .png, the silent one too
    assert [r.getMessage()[:34] for r in caplog.records if r.levelname == "WARNING"] == [
        "piece_000.mid has no notes: the mo"]


def _traced_gates(overrides: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sample: int):
    """`plot_model_gates` on an untrained model of `overrides`: its task and model, the view and the traced
    sequence."""
    from types import SimpleNamespace

    from gru_suite import gates

    cfg = compose_train_config("music", overrides, tmp_path)
    task = run.build_task(cfg.task)
    task.datamodule()
    model = run.build_module(cfg, task).model.eval()
    traced, trace = [], gates.trace_gates
    monkeypatch.setattr(gates, "trace_gates", lambda backbone, x, h0: traced.append(x) or trace(backbone, x, h0))
    view, _ = gates.plot_model_gates(SimpleNamespace(task=task, model=model), tmp_path, sample=sample)
    return task, model, view, traced[0][0]


def test_gate_plots_follow_a_generated_roll_step_by_step_by_beat(music_installed: None, corpus: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    primer = sorted(corpus.glob("*.mid"))[0]  # 96 steps
    overrides = [*TINY, f"task.data.path={corpus}", f"task.generate.primer={primer}", "task.generate.length=64",
                 "task.generate.pieces=2"]
    task, model, view, traced = _traced_gates(overrides, monkeypatch, tmp_path, sample=1)
    assert view.title == ("piece_001.mid as generated: a silent start, then its first 127 steps as fed back (the first "
                          "96 the primer's), by beat")
    assert list(view.steps[:4]) == ["start", "1", "1.5", "2"] and len(view.steps) == 128
    roll = task.predict_step(model, torch.tensor([0, 1]))["roll"][1].float()  # the same seed: the same piece
    with torch.no_grad():
        fed = model.adapter(torch.cat([torch.zeros(1, roll.size(1)), roll[:-1]]))
    torch.testing.assert_close(traced, fed)  # the silent start, the primer, then each sampled step


def test_gate_plots_follow_generated_events_as_they_were_fed_back(music_installed: None, corpus: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = [*EVENTS, f"task.data.path={corpus}", "task.generate.unit=steps", "task.generate.length=12",
                 "task.generate.pieces=2"]
    task, model, view, traced = _traced_gates(overrides, monkeypatch, tmp_path, sample=0)
    assert view.title == ("piece_000.mid as generated: the start token, then each event fed back (until the batch's "
                          "last piece ended)") and view.steps is None
    events = task.predict_step(model, torch.tensor([0, 1]))["events"][0]
    with torch.no_grad():
        fed = model.embed(torch.tensor([VOCAB, *events[:11].tolist()]))
    torch.testing.assert_close(traced, fed)  # 12 events: the start token and the first 11 were fed back


def test_a_performances_piano_roll_spans_its_lowest_to_its_highest_pitch(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    piano = pretty_midi.Instrument(0)
    piano.notes += [pretty_midi.Note(90, 60, 0.0, 0.5), pretty_midi.Note(90, 67, 0.5, 1.0)]  # a beat is 0.5 s
    pm.instruments.append(piano)
    original, drawn = writer.plot_roll, {}

    def plot_roll(roll: np.ndarray, low: int, *rest: object) -> object:
        drawn.update(roll=roll, low=low)
        return original(roll, low, *rest)

    monkeypatch.setattr(writer, "plot_roll", plot_roll)
    paths = writer.write_performance(pm, tmp_path / "piece", steps_per_beat=2)
    assert [p.suffix for p in paths] == [".mid", ".png"] and all(p.stat().st_size > 0 for p in paths)
    assert drawn["low"] == 60 and drawn["roll"].shape == (4, 8)  # pitches 60-67, four half-beat steps
    assert drawn["roll"][:2, 0].all() and drawn["roll"][2:, 7].all()  # the top pitch is drawn too
