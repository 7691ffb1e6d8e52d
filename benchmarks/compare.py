"""Print a short comparison table of `benchmarks.run_eval` JSON reports (the quickstart's last step).

python -m benchmarks.compare outputs/eval_baseline.json outputs/eval_stop.json
"""

import argparse
import json

COLUMNS = [
    ("t2v_R@1", "T2V R@1"),
    ("t2v_R@5", "T2V R@5"),
    ("v2t_R@1", "V2T R@1"),
    ("t2v_MdR", "MdR"),
    ("classification/top1_accuracy", "cls top-1"),
    ("pair_accuracy", "reversed-pair acc"),
]


def table(reports: list[dict]) -> str:
    lines = ["| model | " + " | ".join(label for _, label in COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for report in reports:
        name = report["model"] + (f" ({report['baseline']} baseline)" if report.get("baseline") else "")
        cells = [f"{report['metrics'][k]:.3g}" if k in report["metrics"] else "-" for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="JSON files written by benchmarks.run_eval --output_json")
    args = parser.parse_args(argv)
    reports = [json.loads(open(path).read()) for path in args.reports]
    print(f"{reports[0]['dataset']} ({reports[0]['split']} split):")
    print(table(reports))


if __name__ == "__main__":
    main()
