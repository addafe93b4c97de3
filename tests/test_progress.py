"""The sweep's progress bar ends full after a sweep that measured everything (tqdm's notebook
widget paints a bar that closes short of its total red), and short after one cut off."""

from types import SimpleNamespace

from comlab.lab.experiment import _Progress


def _specs(n):
    return [SimpleNamespace(index=i, key=("k", i), repeat=0, label=lambda r: "run")
            for i in range(n)]


def test_a_finished_sweep_fills_the_bar_exactly():
    specs = _specs(72)
    weights = {s.index: 0.1 for s in specs}  # float sums: 7.1999... != 7.2
    with _Progress(specs, specs, weights, enabled=True) as bar:
        for s in specs:
            bar.done(s)
        assert bar.bar.n == bar.bar.total and isinstance(bar.bar.n, int)


def test_resumed_runs_count_and_an_interrupted_sweep_stays_short():
    specs = _specs(30)
    weights = {s.index: 1 / 3 for s in specs}
    with _Progress(specs, specs[10:], weights, enabled=True) as bar:
        for s in specs[10:20]:
            bar.done(s)
        assert 0 < bar.bar.n < bar.bar.total
        for s in specs[20:]:
            bar.done(s)
        assert bar.bar.n == bar.bar.total
