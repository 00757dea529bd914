"""Speech benchmark on the Free Spoken Digit Dataset: isolated digits, an unseen speaker, connected strings, speed.

    python benchmarks/speech.py --fsdd ../shared/data/speech/fsdd
    python benchmarks/speech.py --fsdd ... --settings seen --minutes 3   # a quick look

Two trainings with `experiment=fsdd` (a unidirectional GRU-CTC over word tokens with a 300 ms
lookahead; add `--override task.text.tokens=chars` for characters, or
`--override task.features.normalize=online` for online mean normalisation), each
testing the last epoch's weights (the preset's; `--override callbacks.model_checkpoint.monitor=val/cer`
picks the epoch with the lowest character error rate on validation takes 10-12 instead):

- `seen`: takes 5-9 of every speaker (`--test-takes`; with FSDD's full recordings, takes 0-49, the
  standard test split is `--test-takes 0-4`) are held out of training (the test set); reports
  (a) isolated-digit accuracy on them, the same after 1 s of room tone (noise at each
  recording's quietest level: speech that does not start with the audio), and (c) WER on
  connected digit strings (2-5 digits, random pauses and levels) built from those held-out takes only;
- `unseen`: every recording of `--speaker` is held out; reports (b) its isolated-digit
  accuracy (and WER on strings built from its recordings).

`--ensemble A.ckpt --ensemble B.ckpt ...` trains nothing: it scores the ensemble of models kept by
earlier runs of one setting (`--keep`; each checkpoint must hold that setting's split), decoding
the mean of their per-frame probabilities, as `gru-suite-predict ensemble=[...]` does.

Speed: real-time factor (processing seconds per audio second, one utterance at a time,
one CPU thread) of offline transcription (features, network, greedy decoding, word
timestamps) and of streaming in `--chunk-ms` chunks (partial transcript after every chunk),
with a check that every streamed transcript equals the offline one.
Prints a table per section, then one JSON line. A setting the folder cannot serve (`--speaker` or `--test-takes`
absent is named before any training; a split left empty, when that setting starts) is an error on stderr: the other
settings still run and are reported, the JSON lists it under `failed_settings`, and the exit code is 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import exit_code, fit_and_test, positive_int, quiet, quote, table  # noqa: E402

GOALS = {"seen_accuracy": 0.99, "unseen_accuracy": 0.95, "connected_wer": 0.03, "rtf": 0.05}


def settings(speaker: str, test_takes: tuple[int, int]) -> dict[str, list[str]]:
    first, last = test_takes
    return {
        "seen": [f"task.data.fsdd_split.test_takes=[{first},{last}]", "task.data.fsdd_split.test_speakers=[]"],
        "unseen": ["task.data.fsdd_split.test_takes=null", f"task.data.fsdd_split.test_speakers=['{speaker}']"],
    }


def recorded(fsdd: Path) -> tuple[set[str], set[int]]:
    """The speakers and the takes of the folder's `{digit}_{speaker}_{take}.wav` recordings (read from the names)."""
    from gru_suite_plugins.speech.sources import FSDD_NAME, fsdd_recordings

    names = [match for path in fsdd_recordings(fsdd).glob("*.wav") if (match := FSDD_NAME.match(path.stem))]
    return {match[2] for match in names}, {int(match[3]) for match in names}


def layout_problem(fsdd: Path, speakers: set[str], takes: set[int], chosen: list[str], speaker: str,
                   test_takes: tuple[int, int]) -> str | None:
    """What keeps the `chosen` settings from running on the `speakers` and `takes` recorded in `fsdd`, named before
    any training (a later setting's failure would lose the earlier ones' figures), else None."""
    if not takes:
        return f"{fsdd}: no {{digit}}_{{speaker}}_{{take}}.wav recordings"
    if "unseen" in chosen and speaker not in speakers:
        return f"--speaker {speaker}: no recordings of that speaker in {fsdd}; the speakers are {sorted(speakers)}"
    first, last = test_takes
    if "seen" in chosen and not any(first <= take <= last for take in takes):
        return (f"--test-takes {first}-{last}: no recordings of those takes in {fsdd}; the takes here are "
                f"{min(takes)}-{max(takes)}")
    return None


def default_test_takes(recorded_takes: set[int], say: bool = True) -> tuple[int, int]:
    """FSDD's own test split, takes 0-4, where the recordings hold them (the full dataset), else takes 5-9 (the copy
    in ../shared/data starts at take 5); said on stderr when `say`."""
    takes = (0, 4) if any(take <= 4 for take in recorded_takes) else (5, 9)
    if say:
        print(f"note: seen-speaker test takes {takes[0]}-{takes[1]}" + (" (FSDD's test split)" if takes == (0, 4)
                                                                      else " (the folder has no takes 0-4)"),
              file=sys.stderr)
    return takes


def take_range(text: str) -> tuple[int, int]:
    """`5-9` -> (5, 9)."""
    first, _, last = text.partition("-")
    if not (first.isdigit() and last.isdigit() and int(first) <= int(last)):
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST take numbers such as 0-4, got {text!r}")
    return int(first), int(last)


def transcribe(members: list[tuple[Any, Any]], utterances: list[Any], chunk_ms: float) -> dict[str, Any]:
    """Offline and (for one streamable model) streamed transcripts of `utterances`, one at a time, with their
    processing times; `members` are (task, model) pairs, several for an ensemble (the mean of their per-frame
    probabilities, decoded once). `streamed` and `rtf_streaming` are None for an offline-only model or an ensemble."""
    import torch

    from gru_suite_plugins.speech.data import AudioSet
    from gru_suite_plugins.speech.decode import mean_emissions
    from gru_suite_plugins.speech.stream import StreamingRecognizer

    task, model = members[0]
    featurizers = [member.featurizer() for member, _ in members]
    streams = len(members) == 1 and can_stream(task, model, featurizers[0])
    chunk = round(chunk_ms * task.features.sample_rate / 1000)
    offline, streamed, offline_s, stream_s = [], [], 0.0, 0.0
    with torch.inference_mode():
        for u in utterances:
            start = time.perf_counter()
            log_probs = mean_emissions([member.emissions(net, AudioSet([u], featurizer).__getitems__([0]))[0][0]
                                        for (member, net), featurizer in zip(members, featurizers)])
            source = {"path": str(u.path), "sound": task.sounding(u.samples, len(log_probs)), "duration": u.seconds,
                      "reference": None}
            offline.append(task.transcript(log_probs, source)["text"])  # decoded and timed as gru-suite-predict does
            offline_s += time.perf_counter() - start
            if not streams:
                continue
            start = time.perf_counter()
            stream = StreamingRecognizer(model, featurizers[0], task.vocab)
            for i in range(0, len(u.samples), chunk):
                stream.accept(u.samples[i:i + chunk])
            streamed.append(stream.finish())
            stream_s += time.perf_counter() - start
    audio_s = sum(u.seconds for u in utterances)
    return {"offline": offline, "streamed": streamed if streams else None, "audio_s": audio_s,
            "rtf_offline": offline_s / audio_s, "rtf_streaming": stream_s / audio_s if streams else None}


def can_stream(task: Any, model: Any, featurizer: Any) -> bool:
    """Whether `model` can transcribe chunk by chunk: the streaming recogniser itself says."""
    from gru_suite.errors import UserError
    from gru_suite_plugins.speech.stream import StreamingRecognizer

    try:
        StreamingRecognizer(model, featurizer, task.vocab)
    except UserError:
        return False
    return True


def scores(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    import jiwer

    return {"n": len(references), "accuracy": sum(h == r for h, r in zip(hypotheses, references)) / len(references),
            "wer": jiwer.wer(references, hypotheses), "cer": jiwer.cer(references, hypotheses)}


SILENCE_S = 1.0
"""Seconds of room tone before each isolated test digit in the `after_silence` row."""
KINDS = {"isolated": "isolated", "after_silence": f"isolated after {SILENCE_S:g} s of silence",
         "connected": "connected"}


def run_setting(fsdd: Path, name: str, overrides: list[str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train (or, with `--ensemble`, load) the setting's model(s), then transcribe its test utterances."""
    import numpy as np
    import torch

    from gru_suite.run import build_task
    from gru_suite.testing import compose_train_config
    from gru_suite_plugins.speech.sources import after_silence

    hours, rest = divmod(int(args.minutes * 60), 3600)
    cfg = compose_train_config("speech", [
        "experiment=fsdd", f"task.data.fsdd={quote(fsdd)}", *overrides, "logger=none",
        "callbacks.progress_bar=null", "predict_after_training=false",
        f"++trainer.max_time=00:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}", *args.override,
    ], out / name)
    if args.ensemble:
        members, result = ensemble_members(cfg, args.ensemble), {"members": [str(p) for p in args.ensemble]}
        test = build_task(cfg.task).split("test")
    else:
        torch.set_num_threads(args.train_threads)
        run = fit_and_test(cfg, args.seed)
        members, test = [(run.task, run.module.model.eval())], run.task.split("test")
        result = {"fit_wall_s": run.fit_wall_s, "epochs_run": len(run.clock.wall), "best_epoch": run.best_epoch,
                  "best_val_cer": run.best_val_loss, "test_metrics": run.test_metrics,
                  "train_utterances": len(run.task.split("train"))}
    torch.set_num_threads(1)
    isolated = [u for u in test if " " not in u.text]
    rng = np.random.default_rng(args.seed)
    for kind, items in [("isolated", isolated), ("after_silence", [after_silence(u, SILENCE_S, rng) for u in isolated]),
                        ("connected", [u for u in test if " " in u.text])]:
        if not items:  # no connected test strings (task.data.connected.test=0)
            continue
        out_ = transcribe(members, items, args.chunk_ms)
        wrong = [{"where": u.where, "reference": u.text, "hypothesis": h}
                 for u, h in zip(items, out_["offline"]) if h != u.text]
        result[kind] = {**scores([u.text for u in items], out_["offline"]), "errors": wrong[: args.show_errors],
                        "rtf_offline": out_["rtf_offline"], "rtf_streaming": out_["rtf_streaming"],
                        "audio_s": out_["audio_s"],
                        "streaming_equals_offline": None if out_["streamed"] is None
                        else sum(a == b for a, b in zip(out_["offline"], out_["streamed"]))}
    return result


def ensemble_members(cfg: Any, paths: list[Path]) -> list[tuple[Any, Any]]:
    """The kept models at `paths` as (task, model) pairs: speech models trained on this setting's split (its test
    set unseen), each able to join the first (`SpeechTask.check_member`), at the sample rate of `cfg`'s test audio."""
    from omegaconf import OmegaConf

    from gru_suite.checkpoint import read_checkpoint, restore, stored_config
    from gru_suite.errors import UserError

    wanted = {key: OmegaConf.to_container(cfg.task.data[key], resolve=True) for key in ("fsdd_split", "connected")}
    members = []
    for path in paths:
        checkpoint = read_checkpoint(path)
        stored = stored_config(checkpoint).task
        if stored.get("name") != "speech":
            raise UserError(f"{path} holds a model of task {stored.get('name')!r}, not speech")
        held = {key: OmegaConf.to_container(stored.data[key], resolve=True) if stored.data.get(key) is not None
                else None for key in wanted}
        if held != wanted:
            raise UserError(f"{path} was trained on another split ({held}), not this setting's ({wanted})")
        module = restore(checkpoint, source=str(path))
        if members:
            try:
                module.task.check_member(members[0][0])
            except UserError as err:
                raise UserError(f"{path}: {err}") from err
        members.append((module.task, module.model.eval()))
    if (rate := int(cfg.task.features.sample_rate)) != members[0][0].features.sample_rate:
        raise UserError(f"the models read audio at {members[0][0].features.sample_rate} Hz, this setting at {rate} Hz: "
                        "give the training's --override task.features.sample_rate")
    return members


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd", type=Path, required=True, help="FSDD folder (holding recordings/)")
    parser.add_argument("--settings", default="seen,unseen", help="comma-separated subset of seen,unseen")
    parser.add_argument("--speaker", default="george", help="the speaker held out in the unseen setting")
    parser.add_argument("--test-takes", type=take_range, default=None, metavar="FIRST-LAST",
                        help="the takes held out in the seen setting (default: FSDD's test takes 0-4 where the "
                             "folder has them, else 5-9; validation takes are 10-12: "
                             "--override 'task.data.fsdd_split.val_takes=[A,B]' moves them)")
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-time budget per training (default 20)")
    parser.add_argument("--chunk-ms", type=float, default=100.0)
    parser.add_argument("--train-threads", type=positive_int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each setting's run folder (checkpoints) under this folder "
                             "(default: a temporary one)")
    parser.add_argument("--ensemble", type=Path, action="append", default=[], metavar="CKPT",
                        help="no training: score the ensemble of these kept models (repeat, at least 2; each "
                             "trained on the one setting named by --settings, e.g. kept by --keep)")
    parser.add_argument("--show-errors", type=int, default=20,
                        help="misrecognised test utterances listed per setting and kind (default 20)")
    args = parser.parse_args(argv)
    if unknown := [name for name in args.settings.split(",") if name not in ("seen", "unseen")]:
        parser.error(f"--settings takes seen and/or unseen, got {', '.join(unknown)}")
    if args.show_errors < 0:
        parser.error(f"--show-errors must be at least 0, got {args.show_errors}")
    if args.ensemble and (len(args.ensemble) < 2 or "," in args.settings):
        parser.error("--ensemble takes at least two checkpoints and one setting (--settings seen or unseen)")
    if missing := [str(p) for p in args.ensemble if not p.is_file()]:
        parser.error(f"--ensemble: no checkpoint at {', '.join(missing)}")
    if not args.fsdd.is_dir():
        print(f"error: {args.fsdd} not found", file=sys.stderr)
        return 2
    speakers, takes = recorded(args.fsdd)
    if args.test_takes is None:
        args.test_takes = default_test_takes(takes, say="seen" in args.settings.split(","))
    if problem := layout_problem(args.fsdd, speakers, takes, args.settings.split(","), args.speaker, args.test_takes):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    quiet()
    chosen = settings(args.speaker, args.test_takes)
    results: dict[str, Any] = {"fsdd": str(args.fsdd), "minutes_per_training": args.minutes,
                               "speaker_held_out": args.speaker, "test_takes": list(args.test_takes),
                               "chunk_ms": args.chunk_ms, "settings": {}}
    from gru_suite.errors import UserError

    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings.split(","):
            try:
                results["settings"][name] = run_setting(args.fsdd, name, chosen[name], args, args.keep or Path(tmp))
            except UserError as err:  # the other settings' figures are still reported
                failed[name] = str(err)
                print(f"error: setting {name}: {err}", file=sys.stderr)
    if not results["settings"]:
        return 2
    rows = []
    for name, r in results["settings"].items():
        for kind, label in KINDS.items():
            if kind not in r:
                continue
            s = r[kind]
            same = s["streaming_equals_offline"]
            rows.append([f"{name} / {label}", s["n"], s["accuracy"], s["wer"], s["cer"], s["rtf_offline"],
                         "n/a" if same is None else s["rtf_streaming"], "n/a" if same is None else f"{same}/{s['n']}"])
    first, last = args.test_takes
    table(f"FSDD test: seen = takes {first}-{last} held out, unseen = speaker held out; connected = 2-5 digit strings",
          ["setting / utterances", "n", "accuracy", "WER", "CER", "RTF offline", "RTF streaming", "stream = offline"],
          rows)
    if args.ensemble:
        table("ensemble (mean per-frame probabilities, greedy decoding)", ["setting", "models"],
              [[n, ", ".join(r["members"])] for n, r in results["settings"].items()])
    else:
        table("training (1 run per setting, CPU)",
              ["setting", "train utts", "epochs", "best epoch (from 0)", "val CER", "fit s"],
              [[n, r["train_utterances"], r["epochs_run"], r["best_epoch"], r["best_val_cer"], r["fit_wall_s"]]
               for n, r in results["settings"].items()])
    errors = [[f"{n} / {label}", e["where"], e["reference"], e["hypothesis"]]
              for n, r in results["settings"].items() for kind, label in KINDS.items() if kind in r
              for e in r[kind]["errors"]]
    if errors:
        table(f"misrecognised test utterances (at most {args.show_errors} per row of the first table)",
              ["setting / utterances", "recording", "reference", "offline transcript"], errors)
    results["goals"] = GOALS
    if failed:
        results["failed_settings"] = failed
    print(json.dumps(results, default=float, sort_keys=True))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
