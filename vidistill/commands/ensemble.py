"""Make an ensemble of trained runs: one model (eval, predict, teacher-outputs, export as one ONNX graph, a serial
run's teacher) whose predictions are the members' weighted average; the weights given, equal, or fitted on
held-out data (the best GAP on a grid over the simplex)."""

from __future__ import annotations

from vidistill.commands.options import number
from vidistill.yt8m.errors import ConfigError

HELP = "combine trained runs into one ensemble model (weights given, equal, or fitted on held-out data)"


def add_arguments(parser) -> None:
    parser.add_argument("members", nargs="+", help="run directories (each gives its teacher, else its student)")
    parser.add_argument("--out", required=True, help="ensemble directory to write (ensemble.yaml)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", help="comma-separated prediction weights, one per member (normalized)")
    weights.add_argument(
        "--fit-weights",
        metavar="DATA",
        help="labeled held-out records (glob) to fit the weights on: the best GAP on a grid over the simplex in "
        "steps of 1/10 (not the data you report the ensemble's accuracy on)",
    )
    parser.add_argument(
        "--representation",
        default="0",
        help="L_REP's target when the ensemble teaches: a member's index (default 0), or 'all' (every member's, "
        "concatenated, each weighted by --rep-weights)",
    )
    parser.add_argument("--rep-weights", help="with --representation all: comma-separated L_REP weights")
    parser.add_argument("--batch-size", type=number(">= 1"), default=64, help="with --fit-weights (default 64)")


def _floats(text: str | None, option: str) -> list[float]:
    if not text:
        return []
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated numbers, got {text!r}") from None


def run(args) -> int:
    from tabulate import tabulate

    from vidistill.distill.ensemble import EnsembleConfig, build_ensemble, load_members, save_ensemble

    representation = args.representation if args.representation == "all" else None
    if representation is None:
        try:
            representation = int(args.representation)
        except ValueError:
            raise ConfigError(
                f"--representation takes a member's index or 'all', got {args.representation!r}"
            ) from None
    config = EnsembleConfig(
        members=list(args.members),
        weights=_floats(args.weights, "--weights"),
        representation=representation,
        rep_weights=_floats(args.rep_weights, "--rep-weights"),
    )
    members = load_members(config)
    if args.fit_weights:
        config.weights, config.fitted = _fit(config, members, args.fit_weights, args.batch_size)
        rows = [
            [m.path, f"{g:.4f}", f"{w:.2f}"] for m, g, w in zip(members, config.fitted["member_gaps"], config.weights)
        ]
        print(tabulate(rows, headers=["member", "GAP alone", "weight"]))
        print(
            f"ensemble GAP on {args.fit_weights}: equal weights {config.fitted['equal_gap']:.4f}, "
            f"fitted {config.fitted['gap']:.4f}"
        )
    build_ensemble(config, members)  # it builds: the members fit together
    path = save_ensemble(config, args.out)
    weights = ", ".join(f"{w:.2f}" for w in config.normalized_weights)
    print(f"wrote the ensemble of {len(members)} members (weights {weights}) to {path}")
    return 0


def _fit(config, members, data: str, batch_size: int) -> tuple[list[float], dict]:
    import numpy as np

    from vidistill.distill.ensemble import GRID_STEPS, fit_weights
    from vidistill.distill.evaluate import predictions
    from vidistill.yt8m.metrics import gap

    outputs, labels = [], None
    for member in members:
        classes = int(member.model.output["predictions"].shape[-1])
        batches = list(
            predictions(member.model, data, num_classes=classes, max_frames=member.frames, batch_size=batch_size)
        )
        outputs.append(np.concatenate([scores for _, scores, _ in batches]))
        labels = np.concatenate([truth for _, _, truth in batches])
    weights, best = fit_weights(outputs, labels)
    equal = gap(sum(outputs) / len(outputs), labels)
    fitted = {
        "data": data,
        "videos": int(len(labels)),
        "search": f"every weight vector on the simplex in steps of 1/{GRID_STEPS}, the best GAP",
        "gap": best,
        "equal_gap": float(equal),
        "member_gaps": [float(gap(p, labels)) for p in outputs],
    }
    return weights, fitted
