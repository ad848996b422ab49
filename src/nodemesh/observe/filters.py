"""The `nodemesh observe` filter model, with the semantics of `hubble observe` where they match.

Pure: flags in, a `FlowQuery` out; flows in, the selected flows out. `now` is an argument.

Hubble's model (cilium/cilium `hubble/cmd/observe/flows_filter.go`, `pkg/hubble/filters/k8s.go`,
`hubble/pkg/time/time.go`), reproduced here:

- A `FlowFilter` matches when every field that is set matches (AND); inside one field any value
  may match (OR): `--verdict DROPPED --verdict AUDIT` is either verdict.
- A query's whitelist matches when any one of its filters matches.
- "Either side" flags build two filters, left on the source and right on the destination:
  `--pod X` is (source pod X) OR (destination pod X), and every other flag is applied to both.
  `--from-pod A --to-pod B` therefore means source A AND destination B.
- A pod name is `[namespace/]name-prefix`; "If namespace is not provided, 'default' is used";
  `shop/` is every pod of `shop`. An endpoint with neither namespace nor pod never matches.
- `--namespace NS` is applied like Hubble's namespace modifier: the left filter's source pods
  and the right filter's destination pods get `NS/` prepended to names without a namespace (an
  empty pod list becomes `NS/`, any pod of NS). A name that already has another namespace is a
  conflict; `--namespace` cannot be combined with `--from-pod` or `--to-pod`, nor `--pod` with
  `--from-pod`/`--to-pod` ("filters --X and --Y cannot be combined").
- `--since` is a Go duration in the past (`5m`, `1h30m`, `300ms`) or an absolute time
  (`2006-01-02`, `2006-01-02T15Z07:00`, `2006-01-02T15:04Z07:00`, RFC 3339, RFC 1123Z).
- With neither `--since` nor `--follow`, `--last` defaults to 20 (`defaults.FlowPrintCount`);
  `--all` shows every flow and conflicts with `--last`. `--follow` without `--last` or `--since`
  shows only new flows.

Left out on purpose: `--not` (blacklists) and the other Hubble filters (ip, label, port, ...);
they fit the same model when needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nodemesh.errors import UsageError
from nodemesh.observe.flow import Flow, FlowEndpoint, Verdict

__all__ = [
    "DEFAULT_LAST",
    "FilterError",
    "FlowFilter",
    "FlowQuery",
    "PodName",
    "build_query",
    "parse_duration",
    "parse_since",
]

DEFAULT_LAST = 20  # hubble observe: defaults.FlowPrintCount


class FilterError(UsageError):
    """A filter flag that cannot be acted on (bad value, conflicting flags)."""


@dataclass(frozen=True, slots=True)
class PodName:
    """`[namespace/]name-prefix`: a namespace (exact) and a pod name prefix (empty = any pod)."""

    namespace: str
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> PodName:
        """Hubble's `k8s.ParseNamespaceName`: no namespace means `default`."""
        ns, sep, name = text.partition("/")
        if not sep:
            if not ns:
                raise FilterError(f"invalid filter, must be [namespace/][<name>], got {text!r}")
            return cls("default", ns)
        if not ns and not name:
            raise FilterError(f"invalid filter, must be [namespace/][<name>], got {text!r}")
        return cls(ns, name.split("/", 1)[0])

    def matches(self, ep: FlowEndpoint) -> bool:
        if ep.namespace is None and ep.pod is None:
            return False
        return self.namespace == (ep.namespace or "") and (ep.pod or "").startswith(self.prefix)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.prefix}"


@dataclass(frozen=True, slots=True)
class FlowFilter:
    """Hubble's FlowFilter, for the fields nodemesh supports: every set field must match."""

    verdicts: frozenset[Verdict] = frozenset()
    source_pods: tuple[PodName, ...] = ()
    destination_pods: tuple[PodName, ...] = ()

    def matches(self, flow: Flow) -> bool:
        if self.verdicts and flow.verdict not in self.verdicts:
            return False
        if self.source_pods and not any(p.matches(flow.source) for p in self.source_pods):
            return False
        return not self.destination_pods or any(p.matches(flow.destination) for p in self.destination_pods)


@dataclass(frozen=True, slots=True)
class FlowQuery:
    """What to show: a whitelist (any filter matches; empty = all), a start time, a count."""

    whitelist: tuple[FlowFilter, ...] = ()
    since: datetime | None = None
    last: int | None = None  # None: no limit
    follow: bool = False

    def matches(self, flow: Flow) -> bool:
        if self.since is not None and flow.time < self.since:
            return False
        return not self.whitelist or any(f.matches(flow) for f in self.whitelist)

    def select(self, flows: Iterable[Flow]) -> list[Flow]:
        """The flows to print before following: matching ones, oldest first, the newest `last`."""
        chosen = sorted((f for f in flows if self.matches(f)), key=lambda f: f.time)
        if self.last is not None:
            chosen = chosen[-self.last :] if self.last > 0 else []
        return chosen


# ---- building a query from flags (Hubble's filterTracker) ------------------------------------
_CONFLICTS: tuple[tuple[str, ...], ...] = (
    ("from-pod", "pod"),
    ("to-pod", "pod"),
    ("to-pod", "namespace"),
    ("from-pod", "namespace"),
)


def build_query(
    *,
    now: datetime,
    verdicts: Sequence[str] = (),
    namespaces: Sequence[str] = (),
    pods: Sequence[str] = (),
    from_pods: Sequence[str] = (),
    to_pods: Sequence[str] = (),
    since: str | None = None,
    last: int | None = None,
    show_all: bool = False,
    follow: bool = False,
) -> FlowQuery:
    """The query `hubble observe` would send for these flags (see the module docstring)."""
    given = {
        name
        for name, values in (
            ("pod", pods),
            ("from-pod", from_pods),
            ("to-pod", to_pods),
            ("namespace", namespaces),
        )
        if values
    }
    for a, b in _CONFLICTS:
        if a in given and b in given:
            raise FilterError(f"filters --{a} and --{b} cannot be combined")
    if last is not None and last < 0:
        raise FilterError("--last must be >= 0")
    if last is not None and show_all:
        raise FilterError("cannot set both --last and --all")
    for ns in namespaces:
        if not ns or "/" in ns:
            raise FilterError(f"invalid namespace {ns!r}")

    wanted: set[Verdict] = set()
    for v in verdicts:
        try:
            wanted.add(Verdict(v.upper()))
        except ValueError:
            choices = ", ".join(x.value for x in Verdict)
            raise FilterError(f"invalid --verdict value: {v} (one of {choices})") from None

    # left = the source side, right = the destination side (both get the two-sided flags)
    left_src: list[str] = list(pods) + list(from_pods)
    left_dst: list[str] = list(to_pods)
    right_src: list[str] = list(from_pods)
    right_dst: list[str] = list(pods) + list(to_pods)
    used = bool(pods or from_pods or to_pods or namespaces or wanted)
    if namespaces:
        for name in [*pods, *from_pods, *to_pods]:
            ns = name.split("/", 1)[0] if "/" in name else ""
            for n in namespaces:
                if ns and ns != n:
                    raise FilterError(f"namespace conflict: {n!r} does not contain {name!r}")
        left_src = _with_namespaces(left_src or [""], namespaces)
        right_dst = _with_namespaces(right_dst or [""], namespaces)

    whitelist: tuple[FlowFilter, ...] = ()
    if used:
        left = FlowFilter(frozenset(wanted), _parse(left_src), _parse(left_dst))
        right = FlowFilter(frozenset(wanted), _parse(right_src), _parse(right_dst))
        whitelist = (left,) if left == right else (left, right)

    start = parse_since(since, now) if since is not None else None
    count = last
    if start is None and not show_all and count is None and not follow:
        count = DEFAULT_LAST
    if follow and count is None and start is None and not show_all:
        count = 0  # follow from now: no history
    return FlowQuery(whitelist, start, count, follow)


def _with_namespaces(names: list[str], namespaces: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if "/" in name:
            out.append(name)
            continue
        out.extend(f"{ns}/{name}" for ns in namespaces)
    return out


def _parse(names: list[str]) -> tuple[PodName, ...]:
    return tuple(PodName.parse(n) for n in names)


# ---- time -------------------------------------------------------------------------------------
_UNITS = {
    "ns": timedelta(microseconds=0.001),
    "us": timedelta(microseconds=1),
    "µs": timedelta(microseconds=1),  # U+00B5 micro sign
    "μs": timedelta(microseconds=1),  # U+03BC greek mu
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
}
_SEGMENT = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> timedelta:
    """Go's `time.ParseDuration`: `300ms`, `-1.5h`, `2h45m`, `0`. Raises FilterError."""
    s = text
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return timedelta(0)
    if not s:
        raise FilterError(f"invalid duration {text!r}")
    total = timedelta(0)
    pos = 0
    while pos < len(s):
        m = _SEGMENT.match(s, pos)
        if m is None:
            raise FilterError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


_ABSOLUTE = (
    "%Y-%m-%d",  # YearMonthDay (UTC)
    "%Y-%m-%dT%H%z",  # YearMonthDayHour
    "%Y-%m-%dT%H:%M%z",  # YearMonthDayHourMinute
    "%a, %d %b %Y %H:%M:%S %z",  # RFC1123Z
)


def parse_since(text: str, now: datetime) -> datetime:
    """Hubble's `hubtime.FromString`: a duration before `now`, else an absolute time."""
    text = text.strip()
    try:
        return now - parse_duration(text)
    except FilterError:
        pass
    if "T" in text and re.search(r"T\d\d:\d\d:\d\d", text):
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            t = None
        if t is not None and t.tzinfo is not None:
            return t.astimezone(UTC)
    for layout in _ABSOLUTE:
        try:
            t = datetime.strptime(text.replace("Z", "+0000"), layout)
        except ValueError:
            continue
        return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).astimezone(UTC)
    raise FilterError(
        f"invalid --since {text!r}: use a duration (5m, 1h30m) or a time (RFC 3339, 2006-01-02)"
    )
