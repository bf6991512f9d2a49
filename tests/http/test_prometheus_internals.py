"""The assumptions `filecask.http.prometheus_internals` makes about prometheus-client, one
test each. A failure here after an upgrade names the assumption that no longer holds: the
adapter (and only it) is what has to change. The self-check's own failures are tested at
the end."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

from filecask.app import create_app
from filecask.http import libcheck
from filecask.http import prometheus_internals as internals
from filecask.http.libcheck import ALLOW_UNTESTED_ENV, UnsupportedLibrary
from filecask.http.metrics import MULTIPROC_ENV
from filecask.settings import Settings

BOUNDS = (0.1, 1.0)


def histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("t_seconds", "test", ["route"], buckets=BOUNDS, registry=registry)


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for metric in registry.collect()
        for sample in metric.samples
    }


@pytest.fixture
def in_memory_values() -> Iterator[None]:
    """Whatever a test does to the value class, the next one finds it as it was."""
    chosen = values.ValueClass
    yield
    values.ValueClass = chosen


# -- the self-check finds everything ---------------------------------------------------------


def test_the_installed_prometheus_client_passes_the_self_check() -> None:
    assert internals.missing() == []
    internals.check()


# -- batched histogram observations ---------------------------------------------------------


def test_histogram_child_has_a_sum_value_observe_increments() -> None:
    child = histogram(CollectorRegistry()).labels("/")
    child.observe(0.5)
    assert child._sum.get() == 0.5


def test_histogram_child_has_one_bucket_value_per_bound_and_inf() -> None:
    child = histogram(CollectorRegistry()).labels("/")
    assert len(child._buckets) == len(BOUNDS) + 1


def test_histogram_bucket_values_count_their_own_bucket_only() -> None:
    """Not cumulative: the exposition adds them up."""
    registry = CollectorRegistry()
    child = histogram(registry).labels("/")
    child.observe(0.05)
    child.observe(0.5)
    child.observe(5)
    assert [bucket.get() for bucket in child._buckets] == [1, 1, 1]
    assert samples(registry)[("t_seconds_bucket", "1.0")] == 2


def test_adding_to_a_histogram_exposes_what_observing_would() -> None:
    observed, added = CollectorRegistry(), CollectorRegistry()
    one = histogram(observed).labels("/")
    for seconds in (0.05, 0.05, 0.5, 5):
        one.observe(seconds)
    internals.add_to_histogram(histogram(added).labels("/"), 5.6, [2, 1, 1])
    assert samples(added) == pytest.approx(samples(observed))


# -- the value class and multiprocess mode --------------------------------------------------


def test_the_in_memory_value_class_says_it_is_not_multiprocess() -> None:
    assert values.MutexValue._multiprocess is False


def test_the_mmap_value_class_says_it_is_multiprocess() -> None:
    assert values.MultiProcessValue()._multiprocess is True  # type: ignore[no-untyped-call]


def test_get_value_class_chooses_from_the_environment_each_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.delenv(MULTIPROC_ENV.lower(), raising=False)
    assert values.get_value_class() is values.MutexValue  # type: ignore[no-untyped-call]
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    assert values.get_value_class()._multiprocess  # type: ignore[no-untyped-call]


def test_metrics_created_after_choosing_again_write_to_the_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, in_memory_values: None
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    assert not internals.multiprocess_values()
    internals.choose_value_class_again()
    assert internals.multiprocess_values()
    child = histogram(CollectorRegistry()).labels("/")
    internals.add_to_histogram(child, 0.5, [0, 1, 0])
    values.ValueClass = values.MutexValue
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    assert samples(registry)[("t_seconds_bucket", "1.0")] == 1
    assert samples(registry)[("t_seconds_sum", "")] == 0.5


def test_the_check_adds_nothing_to_the_multiprocess_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, in_memory_values: None
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    internals.choose_value_class_again()
    internals.check()
    assert internals.multiprocess_values()  # as it was
    assert list(tmp_path.iterdir()) == []


# -- the self-check fails clearly -----------------------------------------------------------


@pytest.fixture
def version(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set the version importlib.metadata reports for prometheus-client."""
    real = importlib.metadata.version

    def set_version(fake: str) -> None:
        monkeypatch.setattr(
            importlib.metadata,
            "version",
            lambda name: fake if name == internals.PACKAGE else real(name),
        )
        libcheck.installed_version.cache_clear()

    yield set_version
    libcheck.installed_version.cache_clear()
    monkeypatch.undo()
    libcheck.installed_version(internals.PACKAGE)  # as on import: no file I/O on the loop


def test_check_names_a_missing_histogram_value(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Histogram._metric_init

    def init(self: Histogram) -> None:
        original(self)
        del self._buckets

    monkeypatch.setattr(Histogram, "_metric_init", init)
    with pytest.raises(UnsupportedLibrary, match=r"^prometheus-client \S+ lacks .*_buckets"):
        internals.check()


def test_check_names_a_missing_value_class_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(values, "get_value_class")
    with pytest.raises(UnsupportedLibrary, match=r"values\.get_value_class"):
        internals.check()


def test_check_refuses_an_untested_version(monkeypatch: pytest.MonkeyPatch, version: Any) -> None:
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    version("0.99.0")
    with pytest.raises(UnsupportedLibrary) as caught:
        internals.check()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("prometheus-client 0.99.0 is installed, but filecask was tested")
    assert f">={internals.TESTED_LOWEST},<{internals.TESTED_BELOW}" in message


def test_check_lets_an_untested_version_through_when_told(
    monkeypatch: pytest.MonkeyPatch, version: Any
) -> None:
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    version("0.99.0")
    internals.check()


def test_create_app_runs_the_check(
    monkeypatch: pytest.MonkeyPatch, version: Any, settings: Settings
) -> None:
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    version("0.19.0")
    with pytest.raises(UnsupportedLibrary, match=r"^prometheus-client 0\.19\.0"):
        create_app(settings)
