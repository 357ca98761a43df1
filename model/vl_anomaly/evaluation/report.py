"""``report.md`` (and ``results.json``) of an evaluation, from its results dictionary."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(results: dict, out_dir: Path) -> Path:
    """``results.json`` and ``report.md`` for an evaluation."""
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# vl-anomaly eval — {results['date']}", "",
             f"model `{results['model']}` (weights `{results['weights']}`), pixel metrics in **{results['mode']}** "
             "mode (official = SegmentMeIfYouCan evaluator @ 1c7804e, float16, binned, pooled over frames; "
             "exact = unbinned on the same float16 scores). All numbers in percent.", "",
             "| dataset | frames | score | AuPRC ↑ | FPR95 ↓ | AuROC ↑ | AuPRC exact | sIoU gt ↑ | PPV ↑ | mean F1 ↑ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, ds in results["datasets"].items():
        for score, r in ds["scores"].items():
            px, ex, comp = r["pixel"], r["pixel_exact"], r.get("component")
            comp_cells = (f"{comp['sIoU_gt']:.2f} | {comp['PPV']:.2f} | {comp['mean_F1']:.2f}" if comp
                          else "– | – | –")
            lines.append(f"| {name} | {ds['num_frames']} | {score} | {px['AuPRC']:.2f} | {px['FPR95']:.2f} | "
                         f"{px['AuROC']:.2f} | {ex['AuPRC']:.2f} | {comp_cells} |")
    lines += ["", "## Plots", ""]
    for name, ds in results["datasets"].items():
        first = next(iter(ds["scores"].values()))
        lines.append(f"### {name}\n\n![curves]({first['plots']['curves']})\n")
        for score, r in ds["scores"].items():
            lines.append(f"{score}: [histogram]({r['plots']['histogram']}) · [worst/best frames]({r['plots']['frames']})")
        lines.append("")
    t = results["timings_s"]
    lines += ["## Timings", "",
              f"total {t['total']:.1f} s: inference {t['inference']:.1f} s, metrics {t['metrics']:.1f} s, "
              f"loading (waiting) {t['loading']:.1f} s, writing {t['writing']:.1f} s; "
              f"{results['machine']['torch_threads']} torch threads, {results['workers']} loading workers"]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


