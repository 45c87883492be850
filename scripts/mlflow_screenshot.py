"""Screenshot the MLflow UI's compare view of a sweep's training runs (and the runs table).

    # a finished sweep's own sqlite store: a server is started on it for the shot, then stopped
    python scripts/mlflow_screenshot.py --sweep results/smoke --out docs/img/mlflow-compare.png
    # a running server (mlflow.tracking_uri: http://...), experiment by name
    python scripts/mlflow_screenshot.py --url http://127.0.0.1:5000 --experiment toolrl-smoke \
        --out compare.png --runs-out runs.png

Needs the `docs` extra (`pip install -e .[docs]`: Playwright) and a Chromium: Debian's
(`apt-get install chromium`, the default --chromium /usr/bin/chromium) works, `playwright install`
is not needed. The UI is a React app: Chromium's own `--screenshot` catches only the grey loading
skeleton, so Playwright waits for the network to go idle and for the content to render first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from toolrl.tracking import compare_url, is_server_uri, local_server

LAUNCH_ARGS = ["--no-sandbox", "--disable-dev-shm-usage"]


def find_runs(url: str, experiment: str, filter_string: str) -> tuple[str, list[str]]:
    """The experiment's id (`experiment` is a name or an id) and its matching runs, by name."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment) or client.get_experiment(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=filter_string, order_by=["attributes.run_name ASC"])
    if not runs:
        raise SystemExit(f"no runs in experiment {exp.name!r} match {filter_string!r}")
    return exp.experiment_id, [r.info.run_id for r in runs]


def _pick_axes(page: Any, params: list[str], metrics: list[str]) -> None:
    """The parallel-coordinates plot's axes: its two selects (params, then metrics) take a typed
    name and offer the matching keys as options titled with the key."""
    page.get_by_text("Clear All").click()
    for combo, names in zip(page.get_by_role("combobox").all()[:2], (params, metrics), strict=True):
        for name in names:
            combo.click()
            combo.fill(name)
            option = page.get_by_title(name, exact=True)
            if option.count() == 0:
                print(f"warning: no key {name!r} to plot", file=sys.stderr)
                continue
            option.last.click()
        page.keyboard.press("Escape")


def _pick_columns(page: Any, toggle: list[str]) -> None:
    """Toggle the runs table's columns by name in its "Columns" menu (metrics come before
    params, and params before tags, so a name that is both a param and a tag picks the param)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_role("button", name="Columns", exact=True).click()
    dialog = page.get_by_role("dialog")
    search = dialog.get_by_placeholder("Search columns")
    for name in toggle:
        search.fill(name)
        hit = dialog.get_by_text(name, exact=True)
        try:
            hit.first.wait_for(timeout=5000)
        except PlaywrightTimeout:
            print(f"warning: no column {name!r}", file=sys.stderr)
            continue
        hit.first.click()
    search.fill("")
    page.keyboard.press("Escape")


def shoot(pages: list[tuple[str, Path, str, Any]], chromium: str, width: int, height: int, settle_s: float) -> None:
    """Each (url, png, text that shows the page has rendered, what to do then) with one headless
    Chromium. The UI scrolls inside its <main>, so the window is then made as tall as that for
    the shot to hold the whole page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            for url, out, ready, prepare in pages:
                page.set_viewport_size({"width": width, "height": height})
                # not "networkidle": the runs page keeps polling
                page.goto(url, wait_until="load", timeout=120_000)
                page.get_by_text(ready).first.wait_for(timeout=120_000)
                page.wait_for_timeout(1000)
                close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
                if close.count() and close.first.is_visible():  # the assistant panel opens on first load
                    close.first.click()
                prepare(page)
                tall = page.evaluate("() => document.querySelector('main')?.scrollHeight ?? 0")
                page.set_viewport_size({"width": width, "height": max(height, tall + 40)})
                page.mouse.move(0, 0)  # no hover effects in the picture
                page.wait_for_timeout(settle_s * 1000)  # charts animate in after the data arrives
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
                print(f"{out}: {url}")
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--sweep", type=Path, help="a sweep's results folder (reads mlflow/experiment.json)")
    where.add_argument("--url", help="a running MLflow server")
    ap.add_argument("--experiment", help="name or id (default: the sweep's; required with --url)")
    ap.add_argument("--filter", default="tags.stage = 'train'", help="which runs to compare (MLflow search syntax)")
    ap.add_argument("--out", type=Path, required=True, help="PNG of the compare view")
    ap.add_argument("--runs-out", type=Path, help="also a PNG of the experiment's runs table")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1000, help="at least; the compare view's shot is the whole page")
    ap.add_argument("--runs-height", type=int, default=600)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the page has rendered")
    ap.add_argument("--params", default="lr,scheme,seed,signal", help="params on the plot's axes (comma-separated)")
    ap.add_argument(
        "--metrics",
        default="id/success,format_ood/success,content_ood/success",
        help="metrics on the plot's axes (comma-separated)",
    )
    args = ap.parse_args(argv)

    if args.sweep is not None:
        record = json.loads((args.sweep / "mlflow" / "experiment.json").read_text())
        experiment = args.experiment or record["experiment_name"]
        uri = record["tracking_uri"]
    elif args.experiment is None:
        ap.error("--experiment is required with --url")
    else:
        experiment, uri = args.experiment, args.url

    with local_server(uri) if not is_server_uri(uri) else _as_is(uri) as url:
        experiment_id, run_ids = find_runs(url, experiment, args.filter)
        params = [k for k in args.params.split(",") if k]
        metrics = [k for k in args.metrics.split(",") if k]
        shoot(
            [
                (
                    compare_url(url, experiment_id, run_ids),
                    args.out,
                    f"Comparing {len(run_ids)} Runs",
                    lambda page: _pick_axes(page, params, metrics),
                )
            ],
            args.chromium,
            args.width,
            args.height,
            args.settle,
        )
        if args.runs_out:
            # The runs table, searched as in the UI's search box, with the cell and the splits'
            # success as columns instead of the dataset, source and model columns.
            runs = f"{url}/#/experiments/{experiment_id}/runs?searchFilter={quote(args.filter)}"
            shoot(
                [
                    (
                        runs,
                        args.runs_out,
                        "Run Name",
                        lambda page: _pick_columns(page, ["Dataset", "Source", "Models", *params, *metrics]),
                    )
                ],
                args.chromium,
                args.width,
                args.runs_height,
                args.settle,
            )
    return 0


@contextmanager
def _as_is(url: str) -> Iterator[str]:
    yield url.rstrip("/")


if __name__ == "__main__":
    sys.exit(main())
