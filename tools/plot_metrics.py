"""Draw training curves of one or more runs to a PNG.

``python tools/plot_metrics.py RUN_DIR [RUN_DIR ...] -o curves.png [--labels a b] [--smooth 5]``
reads each run's ``metrics.jsonl`` and draws the total training loss, the learning rate and the
validation AP (when the run evaluated periodically), with the LR steps marked.
"""

from __future__ import annotations

import argparse

from detector.utils.plots import plot_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files)")
    parser.add_argument("-o", "--output", default="curves.png", help="PNG to write")
    parser.add_argument("--labels", nargs="*", help="one label per run")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--smooth", type=int, default=1, help="moving average of the loss")
    args = parser.parse_args()
    try:
        path = plot_runs(
            args.runs, args.output, labels=args.labels, title=args.title, smooth=args.smooth
        )
    except (OSError, ValueError) as err:
        parser.exit(1, f"Error: {err}\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
