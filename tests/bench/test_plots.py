"""The plotting modules leave a user's matplotlib as it was: importing cent_serve and writing its
plots from a notebook or a script neither switches the backend nor loads pyplot."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMPORT_AND_PLOT_TIMEOUT_S = 120.0
"""A fresh interpreter imports the engine (numba) and writes two small figures: a few seconds on a
loaded 2-core machine."""

USER_SCRIPT = '''
import sys
from pathlib import Path

import matplotlib
matplotlib.use("svg")  # the user's backend, chosen before cent_serve is imported

import cent_serve.bench.compare
import cent_serve.bench.plots
import cent_serve.bench.sweep
import cent_serve.sweep_plots

out = Path(sys.argv[1])
rows = [dict(model_name="m", **{"parallel.num_devices": n}, throughput_tok_s=100.0 * n, token_latency_ms=5.0 / n,
             energy_per_token_mj=1.0 + n, avg_power_w=10.0 * n) for n in (8, 16)]
cent_serve.sweep_plots.plot_figures(rows, ["parallel.num_devices"], out / "figures.png", trace=False, how="closed form")
sweep = {k: [dict(rate=r, output_throughput=t * r, median_tpot_ms=20.0, p99_tpot_ms=30.0, median_e2el_ms=900.0,
                  p99_e2el_ms=1500.0) for r in (0.5, 1.0)] for k, t in (("CENT", 10.0), ("GPU", 30.0))}
side = dict(hardware="hw")
cent_serve.bench.compare.plot_sweep(out / "compare_sweep.png", sweep, {"CENT": side, "GPU": side}, "m")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
'''


def test_importing_and_plotting_keeps_the_users_backend_and_leaves_pyplot_unloaded(tmp_path):
    proc = subprocess.run([sys.executable, "-c", USER_SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=IMPORT_AND_PLOT_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["svg", "False"], proc.stdout  # (the backend, pyplot loaded)
    for name in ("figures.png", "compare_sweep.png"):  # written as PNG whatever the backend
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_a_long_title_is_broken_to_the_figures_width():
    """A changed preset's label ("llama2-7b (model.hidden_size=3072, model.intermediate_size=8192 and 2
    more) on 8 CENT devices: ...") ran off both edges of utilization.png's 7-inch figure: each line is
    broken at spaces to fit, measured in the font, and a short title is left alone."""
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    from cent_serve.bench.plots import fit_title

    fig = Figure(figsize=(7, 4.4))
    title = ("llama2-7b (model.hidden_size=3072, model.intermediate_size=8192 and 2 more) on 8 CENT devices: "
             "pipeline pp 24 x tp 1, 8 devices used\n4 completed, 0 failed")
    fitted = fit_title(title, fig, 10)
    measure = TextToPath().get_text_width_height_descent
    widths = [measure(line, FontProperties(size=10), ismath=False)[0] for line in fitted.split("\n")]
    assert len(widths) > 2 and max(widths) <= 0.85 * 7 * 72, fitted
    assert measure(title.split("\n")[0], FontProperties(size=10), ismath=False)[0] > 7 * 72  # it did not fit
    assert fitted.replace("\n", " ") == title.replace("\n", " ")  # only spaces became breaks
    assert fit_title("4 completed, 0 failed", fig, 10) == "4 completed, 0 failed"


def test_a_title_is_never_broken_between_a_flag_and_its_value():
    """sweep's pareto.png read 'given: --devices 16 --set' over 'device.clock_hz=4e9': a break between a
    flag and its value. A flag and the word after it (not itself a flag) stay on one line."""
    from matplotlib.figure import Figure

    from cent_serve.bench.plots import fit_title

    title = "given: " + " ".join(f"--set device.field_{i}=1e9" for i in range(12)) + " --ignore-eos --json"
    fitted = fit_title(title, Figure(figsize=(7, 4.4)), 10)
    lines = fitted.split("\n")
    assert len(lines) > 2 and fitted.replace("\n", " ") == title, fitted
    assert not any(line.split(" ")[-1] == "--set" for line in lines), fitted


@pytest.mark.parametrize("num_devices", [4, 27])
def test_utilization_labels_of_a_busy_device_stay_inside_the_axes(tmp_path, monkeypatch, num_devices):
    """The whole azure_conv_2023 on 4 A100s kept them 99.9% busy: each bar's label sat above the
    axes' top (100%), over the title's last line. A label stays within the axes, upright (few
    bars) or turned (many), however full its bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cent_serve.bench.plots import plot_utilization
    from cent_serve.bench.runner import BenchResult

    figs = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figs.append(fig))
    devices = [dict(device_id=d, busy_s={"gpu": 99.9}, clock_s=100.0) for d in range(num_devices)]
    status = dict(model="m", mapping=dict(devices=num_devices, devices_used=num_devices, replicas=1))
    plot_utilization(tmp_path / "u.png", BenchResult([], [], devices, 100.0, 1.0, status),
                     dict(completed=1, failed=0))
    fig = figs[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    ax = fig.axes[0]
    top = ax.get_window_extent(renderer).y1
    labels = [t for t in ax.texts if t.get_text().endswith("%")]
    assert len(labels) == num_devices
    for t in labels:
        assert t.get_window_extent(renderer).y1 <= top, (t.get_text(), t.get_window_extent(renderer).y1, top)
    assert ax.yaxis.get_major_formatter()(100, 0) == "100%" and max(ax.get_yticks()) <= 100 + 1e-9


# 0.18%: matplotlib ticks every 0.025%; 2e-6 (0.0002%, a long trace of few tokens): ticks of 0.00005% past 4 decimals
# 0.0: no bank busy (every request failed), drawn as "-0%, 0%, 0%" about a line at zero
@pytest.mark.parametrize("peak", [0.0018, 0.0015, 0.012, 0.3, 2e-6, 3e-8, 0.0])
def test_experts_busy_ticks_read_their_values(tmp_path, monkeypatch, peak):
    """experts.png's busy panel put ticks every 0.025% and printed them with two decimals: 0.03%, 0.05%,
    0.08%, 0.10%, 0.12%, 0.15%, steps that read uneven (DeepSeek-MoE, 30 azure_conv_2023 requests, tp 8).
    Each tick's label is its value, whatever the peak."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cent_serve.bench.plots import plot_experts
    from cent_serve.bench.runner import BenchResult

    figs = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figs.append(fig))
    n = 64
    busy = [peak * (1 + e % 7) / 7 for e in range(n)]  # 1/7 of the peak to the peak
    experts = dict(tokens=[100 + e for e in range(n)], busy_fraction=busy, top_k=6, imbalance=1.3)
    status = dict(model="m", experts=experts, mapping=dict(devices=32, devices_used=32, replicas=1))
    plot_experts(tmp_path / "e.png", BenchResult([], [], [], 1.0, 1.0, status), dict(completed=1, failed=0))
    fig = figs[0]
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[1]
    low, high = ax.get_ylim()
    ticks = [(loc, label.get_text()) for loc, label in zip(ax.get_yticks(), ax.get_yticklabels())
             if low - 1e-12 <= loc <= high + 1e-12]
    assert len(ticks) >= 3 and low == 0.0
    for loc, text in ticks:
        assert text.endswith("%") and float(text[:-1]) == pytest.approx(loc, abs=1e-9), ticks
