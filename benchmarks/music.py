"""Music benchmark: JSB Chorales NLL per time step for each note head, and generation speed.

    python benchmarks/music.py --jsb ../shared/data/music/jsb_chorales/jsb-chorales-quarter.json
    python benchmarks/music.py --jsb ... --heads independent --minutes 2   # a quick look

Each head trains with its preset (quarter notes, 88 keys: `experiment=jsb_chorales` for the
autoregressive head, `experiment=jsb_chorales_independent` for the independent one) on `train` for at most
`--minutes` of wall time, keeps the checkpoint with the best `valid` NLL and reports its NLL on
`test` (negative log-likelihood in nats per time step, each time step weighted equally), or on
`valid` when the JSON has no test split (the copy in `../shared/data` holds none). Generation speed
compares sampling with the GRU state carried from step to step against recomputing the whole prefix
at every step.
Prints a table per section, then one JSON line.
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

PRESETS = {"autoregressive": "jsb_chorales", "independent": "jsb_chorales_independent"}  # head -> experiment
HEADS = tuple(PRESETS)
REFERENCES = {"GRU (Chung et al. 2014)": 8.54, "LSTM (Chung et al. 2014)": 8.67, "GRU (Bai et al. 2018)": 8.43,
              "TCN (Bai et al. 2018)": 8.10}


def reported_split(jsb: Path) -> str | None:
    """`test` when the JSON holds test pieces, else `valid` (which the task then tests on); None for a file that
    is not JSB Chorales JSON (a MIDI file, say), whose pieces have no train/valid/test split to report on."""
    try:
        splits = json.loads(jsb.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(splits, dict) or not splits.get("train") or not splits.get("valid"):
        return None
    return "test" if splits.get("test") else "valid"


def train_head(jsb: Path, head: str, minutes: float, seed: int, out_dir: Path) -> dict[str, Any]:
    """Fit one head within the time budget and return its best checkpoint's test NLL and timings."""
    from gru_suite.testing import compose_train_config

    hours, rest = divmod(int(minutes * 60), 3600)
    overrides = [
        f"experiment={PRESETS[head]}", f"task.data.path={quote(jsb)}",
        f"++trainer.max_time=00:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}", "trainer.accelerator=auto",
        "logger=none", "callbacks.progress_bar=null", "predict_after_training=false",
    ]
    run = fit_and_test(compose_train_config("music", overrides, out_dir / head), seed)
    return {
        "head": head,
        "nll": run.test_metrics.get("test/loss"),
        "best_epoch": run.best_epoch,
        "epochs_run": len(run.clock.wall),
        "train_s_per_epoch": sum(run.clock.wall) / max(len(run.clock.wall), 1),
        "fit_wall_s": run.fit_wall_s,
        "module": run.module,
    }


def generation_speed(module: Any, steps: int, seed: int) -> dict[str, float]:
    """Steps/s of `generate` (state carried) vs. re-running the backbone over the prefix each step; `same_notes`:
    whether both drew the same piece (they should, from the same seed)."""
    import torch

    from gru_suite_plugins.music.model import Sampling

    model = module.model.eval()
    sampling = Sampling()
    with torch.no_grad():
        start = time.perf_counter()
        piece = model.generate(1, steps, sampling, torch.Generator().manual_seed(seed))
        carried = time.perf_counter() - start
        rolls, next_step = torch.zeros(1, 0, model.pitches), torch.zeros(1, 1, model.pitches)
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        while rolls.size(1) < steps:  # the head's input for the next step, from the whole prefix again
            head_input = model.hidden(torch.cat([rolls, next_step], 1))[:, -1]
            rolls = torch.cat([rolls, model.head.sample(head_input, sampling, generator).unsqueeze(1)], 1)
        recomputed = time.perf_counter() - start
    return {"steps": steps, "carried_steps_per_s": steps / carried, "recomputed_steps_per_s": steps / recomputed,
            "speedup": recomputed / carried, "same_notes": bool(torch.equal(piece, rolls))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jsb", type=Path, required=True, help="jsb-chorales-quarter.json")
    parser.add_argument("--heads", default=",".join(HEADS), help=f"comma-separated subset of {','.join(HEADS)}")
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-time budget per head (default 8)")
    parser.add_argument("--generate-steps", type=int, default=512)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=positive_int,
                        help="torch intra-op threads (default: torch's own, one per core; give 1 beside other jobs)")
    args = parser.parse_args(argv)
    if unknown := [head for head in args.heads.split(",") if head not in HEADS]:
        parser.error(f"--heads takes {', '.join(HEADS)}, got {', '.join(unknown)}")
    if not args.jsb.is_file():
        from gru_suite.errors import not_a_file

        print(f"error: {not_a_file(args.jsb, 'JSB Chorales JSON file')}", file=sys.stderr)
        return 2
    quiet()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if (split := reported_split(args.jsb)) is None:
        print(f"error: {args.jsb}: not JSB Chorales JSON (an object with non-empty \"train\" and \"valid\" lists "
              "of pieces): the benchmark reports on pieces held out of training", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"jsb": str(args.jsb), "split": split, "minutes_per_head": args.minutes, "heads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for head in args.heads.split(","):
            result = train_head(args.jsb, head, args.minutes, args.seed, Path(tmp))
            module = result.pop("module")
            result["generation"] = generation_speed(module, args.generate_steps, args.seed)
            results["heads"][head] = result
    references = REFERENCES.items() if args.jsb.name.lower().startswith("jsb") else ()  # published for JSB alone
    table(
        f"{args.jsb.name}, quarter notes, 88 keys: NLL per time step on {split} (best checkpoint by valid NLL)",
        ["head", f"{split} NLL", "best epoch (from 0)", "epochs", "s/epoch", "fit s"],
        [[h, r["nll"], r["best_epoch"], r["epochs_run"], r["train_s_per_epoch"], r["fit_wall_s"]]
         for h, r in results["heads"].items()]
        + [[f"{name} (JSB test, reference)", value, "", "", "", ""] for name, value in references],
    )
    table(
        f"generation, {args.generate_steps} steps, 1 piece",
        ["head", "state carried steps/s", "recomputed steps/s", "speed-up"],
        [[h, r["generation"]["carried_steps_per_s"], r["generation"]["recomputed_steps_per_s"],
          r["generation"]["speedup"]] for h, r in results["heads"].items()],
    )
    print(json.dumps(results, default=float, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
