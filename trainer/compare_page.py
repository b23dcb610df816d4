"""What ``samtrain compare`` writes: the forest plot (PNG), the HTML page and the JSON of the comparison."""
from __future__ import annotations

import json
from pathlib import Path

from trainer.compare import POOLED, fmt, forest_rows


def write_compare(res: dict, out: str | Path) -> dict[str, Path]:
    """Write ``forest.png``, ``index.html`` and ``compare.json`` into ``out``; returns their paths."""
    from clam2sam.jsonable import jsonable
    from trainer import report_html as H
    from trainer import report_plots as P
    from trainer.run_report import ci_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [r["name"] for r in res["runs"]]
    png = P.forest(forest_rows(res), f"{names[0]} vs {', '.join(names[1:])}", out / "forest.png")

    runs_rows = [[r["name"], r["path"], r["model"], r["n_folds"], ci_text(r["pooled_test_auc"]),
                  *(fmt(r["mean"][k]) for k in r["mean"])] for r in res["runs"]]
    metric_names = list(res["runs"][0]["mean"])
    sections = [("Runs", H.table(["run", "path", "model", "folds", "pooled test AUC % [95 % CI]",
                                  *[f"{m} (mean)" for m in metric_names]], runs_rows, left=3))]
    body = []
    for c in res["comparisons"]:
        rows = []
        for label, ci in c["metrics"].items():
            pooled = label == POOLED
            rows.append([label, fmt(ci["auc_a"] if pooled else ci["mean_a"]), fmt(ci["auc_b"] if pooled else ci["mean_b"]),
                         fmt(ci["mean_diff"], True), f"[{fmt(ci['lo'], True)}, {fmt(ci['hi'], True)}]",
                         f"{ci['n_slides']} slides" if pooled else f"{ci['wins']} / {ci['n']}"
                         + (f" ({ci['ties']} tie{'s' if ci['ties'] > 1 else ''})" if ci["ties"] else "")])
        body.append(f"<p><b>A = {H.esc(c['a'])}</b>, <b>B = {H.esc(c['b'])}</b></p>"
                    + H.table(["metric", "A", "B", "A - B", "95 % interval", "A > B (folds)"], rows))
    body.append(f'<p class="note">{H.esc(res["method"])}; {res["n_boot"]} resamples, seed {res["seed"]}. '
                "With few folds the interval is narrow and optimistic.</p>")
    sections.append(("Paired differences", "\n".join(body)))
    sections.append(("Forest plot", H.img(png, "mean paired difference A - B and its 95 % bootstrap interval")))
    head = ["fold", *[f"{n}: {m}" for n in names for m in ("test AUC", "val AUC")]]
    rows = [[f, *(fmt(res["per_fold"][n][m][i]) for n in names for m in ("test AUC", "val AUC"))]
            for i, f in enumerate(res["folds"])]
    sections.append(("Per-fold values", H.table(head, rows)))
    page = out / "index.html"
    page.write_text(H.page(f"Comparison: {' vs '.join(names)}", sections,
                           intro="Paired over the same folds and repeats; the runs' splits were checked to match."))
    js = out / "compare.json"
    js.write_text(json.dumps(jsonable(res), indent=1) + "\n")
    return {"forest": png, "page": page, "json": js}
