"""
Charts for the docs, drawn from scripts/bench_save.py's own output (its text, as printed).

    .venv/bin/python scripts/bench_save.py --sizes-mib 512 --repeats 9 > docs/assets/bench_save.txt
    .venv/bin/python scripts/render_charts.py docs/assets/bench_save.txt --out docs/assets

For each state size in the output, three SVGs: synchronous saves against the raw write + fsync of
the same bytes (`bench_save_<size>mib_write.svg`), the time a background save blocks the loop
against a memory copy (`..._copy.svg`), and cold loads against a raw read (`..._read.svg`). Each
bar is a row of the benchmark; the dashed line is the limit the row is measured against (the last
limit row of that kind printed before it, else the first after it), and each label repeats the benchmark's ratio to it.
Lines starting with `#` are comments; the per-round lines and the summary lines are not charted.
The SVGs are deterministic (no date, fixed ids), so a re-render of the same input changes nothing.
"""
import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROW = re.compile(r"^\s+(?P<name>\S.*?)\s+(?P<seconds>\d+\.\d+|nan)\s+(?P<rate>\d+\.\d+|nan|inf)\s+"
                 r"(?P<ratio>\d+\.\d+|nan|inf) x (?P<kind>\S+)\s*$")
STATE = re.compile(r"^state (?P<size>\d+) MiB on (?P<device>\S+)")
# What each kind of row is measured against: the limit rows whose name starts so.
LIMITS = {"write": "raw write + fsync", "copy": "copy into allocated buffers", "read": "raw cold read"}
TITLES = {"write": "Synchronous, durable saves against a raw write + fsync of the same bytes",
          "copy": "Background saves: time the loop is blocked, against a memory copy",
          "read": "Cold loads (checksums verified), against a raw read"}


class Row(NamedTuple):
    name: str
    seconds: float
    ratio: float
    kind: str
    limit: str  # the limit row's name ("" for a limit row itself)


def parse(text: str) -> Dict[str, List[Row]]:
    """{"512 MiB on cpu": [Row, ...]} in the order printed; each row knows the limit it is measured against."""
    runs: Dict[str, List[Row]] = {}
    rows: List[Row] = []
    limits: Dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        state = STATE.match(line)
        if state:
            rows, limits = [], {}
            runs[f"{state['size']} MiB on {state['device']}"] = rows
            continue
        m = ROW.match(line)
        if not m:
            continue
        name, kind = m["name"], m["kind"]
        if kind == "limit":
            for k, prefix in LIMITS.items():
                if name.startswith(prefix):
                    limits[k] = name
        rows.append(Row(name, float(m["seconds"]), float(m["ratio"]), kind, "" if kind == "limit" else limits.get(kind, "")))
    for rows in runs.values():  # a row printed before any limit of its kind: the run's first such limit
        first = {}
        for r in rows:
            for k, prefix in LIMITS.items():
                if r.kind == "limit" and r.name.startswith(prefix):
                    first.setdefault(k, r.name)
        rows[:] = [r._replace(limit=first.get(r.kind, "")) if r.kind != "limit" and not r.limit else r for r in rows]
    if not any(runs.values()):
        raise ValueError("no benchmark rows found: is this scripts/bench_save.py's output?")
    return runs


def chart(run: str, rows: List[Row], kind: str, path: Path) -> bool:
    measured = [r for r in rows if r.kind == kind and r.limit]
    if not measured:
        return False
    by_name = {r.name: r for r in rows}
    limit = by_name[measured[-1].limit]
    shown = [limit] + [by_name[n] for n in dict.fromkeys(r.limit for r in measured) if n != limit.name] + measured
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(shown) + 1.4))
    colors = ["#9e9e9e" if r.kind == "limit" else "#3f51b5" if r.name.startswith("ours") or r.name.startswith("fresh")
              else "#ef6c00" for r in shown]
    y = list(range(len(shown)))[::-1]
    ax.barh(y, [r.seconds for r in shown], color=colors, height=0.6)
    ax.axvline(limit.seconds, color="#616161", linestyle="--", linewidth=1)
    top = max(r.seconds for r in shown)
    for yi, r in zip(y, shown):
        label = f"{r.seconds:.4g} s" + ("  (the limit)" if r.kind == "limit" else f"  ({r.ratio:.2f} x {r.kind})")
        ax.text(r.seconds + top * 0.01, yi, label, va="center", fontsize=9,
                bbox=dict(facecolor="white", edgecolor="none", pad=1))
    ax.set_yticks(y, [r.name for r in shown], fontsize=9)
    ax.set_xlim(0, top * 1.45)
    ax.set_xlabel("seconds (median); shorter is better")
    ax.set_title(f"{TITLES[kind]}\n{run}", fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="scripts/bench_save.py's printed output")
    parser.add_argument("--out", type=Path, default=Path("docs/assets"), help="where the SVGs go")
    args = parser.parse_args()
    plt.rcParams["svg.hashsalt"] = "trainer_ckpt"  # fixed element ids: the same input renders the same file
    plt.rcParams["font.family"] = "DejaVu Sans"
    args.out.mkdir(parents=True, exist_ok=True)
    for run, rows in parse(args.output.read_text()).items():
        size = run.split()[0]
        for kind in LIMITS:
            path = args.out / f"bench_save_{size}mib_{kind}.svg"
            if chart(run, rows, kind, path):
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
