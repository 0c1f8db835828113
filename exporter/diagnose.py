"""``node-ping-exporter diagnose``: which node, link or group of nodes is at fault.

It prints what the alert rules decided: every verdict is a recorded series of the
rules (``node_ping:verdict:<kind>``), with the thresholds they used
(``node_ping:threshold:*``). Where Prometheus does not run the rules, or for
another window, selector or threshold, diagnose evaluates the *same* rules
itself: each recorded name is replaced by its expression, or by what Prometheus
already answered for it in this run, so one query per series asks Prometheus for
exactly what the rules would record. Every query is pinned to one instant, as a
rule group's evaluation is. The loss matrix and the verdicts' details come the
same way.

    node-ping-exporter diagnose --prometheus http://prometheus:9090 [--window 10m]
        [--selector 'job="node-exporter"'] [--output text|json] [--timeout 30]

Exit code: 0 nothing found, 1 a problem found, 2 Prometheus unreachable, too
slow (``--timeout``, the whole answer to each query), an answer it cannot read,
no ping series in it, or bad arguments: then one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import math
import queue
import re
import reprlib
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NoReturn

import yaml

from . import rules

Pair = tuple[str, str]
Sample = tuple[dict[str, str], float]  # one series of an answer: labels, value

# Seconds for the whole answer to one query (connection, headers and body).
DEFAULT_TIMEOUT_S = 30.0
# Largest answer read, per query: a 500-node full mesh is about 27 MB, so this
# covers some 1500 nodes while a runaway or hostile server cannot exhaust memory.
MAX_ANSWER_BYTES = 256 * 1024 * 1024
_CHUNK = 64 * 1024

# Short, one-line, escaped renderings of the bad parts of an answer, for error lines.
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 40
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict = 2, 3, 3


class DiagnoseError(Exception):
    """Prometheus cannot answer; the message is the one line printed."""


def visible(text: str) -> str:
    """``text`` safe to print on a terminal: non-printable characters (ANSI escapes,
    newlines, bidi overrides) and backslashes written as Python escapes.

    Node names are label values, which whoever can push or relabel series controls:
    printed raw they could repaint the operator's screen or forge verdict lines."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in text)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Run without the cyclic garbage collector: parsing a large mesh makes millions of
    containers, none of them in a cycle, and the collector would walk the growing heap
    again and again (two thirds of the time at 500 nodes)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _wrong(where: str, value: object, wanted: str) -> str:
    """What is wrong with one field of an answer, short enough for the one error line."""
    if value is None:
        return f"{where} is missing or null, expected {wanted}"
    return f"{where} is {_SHOW.repr(value)}, expected {wanted}"


@dataclass
class Verdict:
    kind: str  # one of KINDS: the rules' node_ping:verdict:<kind>
    subject: str  # a node, "a → b", "a, b | c, d" (partition) or the candidates
    text: str


@dataclass
class Diagnosis:
    window: str  # the loss window the verdicts are over
    source: str  # "recording rules", or the rules evaluated by diagnose
    nodes: list[str]
    loss: dict[str, dict[str, float]]  # source -> destination -> ratio
    rtt_ms: dict[str, dict[str, float]]
    thresholds: dict[str, float] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def problem(self) -> bool:
        return bool(self.verdicts)


class Prometheus:
    """Instant queries against Prometheus's HTTP API, each bounded in time and size.

    Whatever comes back is checked before use: any answer that is not a vector of
    samples with the labels asked for is a DiagnoseError (exit 2), never a
    traceback, which would exit 1, "problem found". Queries are POSTed: the rules
    evaluated inline make long expressions."""

    def __init__(
        self, url: str, timeout: float = DEFAULT_TIMEOUT_S, max_bytes: int | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout  # seconds for the whole answer to one query
        self.max_bytes = MAX_ANSWER_BYTES if max_bytes is None else max_bytes
        self.at: float | None = None  # the evaluation time of every query, once pinned

    def pin(self) -> None:
        """Evaluate every later query at Prometheus's present instant, as a rule group
        evaluates all its rules at one timestamp: the answers then fit together."""
        now = self.samples("vector(time())")
        if now:
            self.at = now[0][1]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The samples of an instant query's result vector."""
        return self.read_answer(self.fetch(expr))

    def series(self, expr: str, *required: str) -> list[Sample]:
        """(labels, value) of each sample, NaN included; every label in ``required``
        must be there."""
        return [
            self._sample(index, sample, required) for index, sample in enumerate(self.query(expr))
        ]

    def samples(self, expr: str, *required: str) -> list[Sample]:
        """The series whose value is a number."""
        return numbers(self.series(expr, *required))

    def unreadable(self, what: str) -> DiagnoseError:
        return DiagnoseError(f"Prometheus at {self.url} gave an answer it cannot read: {what}")

    def too_slow(self) -> DiagnoseError:
        return DiagnoseError(
            f"Prometheus at {self.url} gave no complete answer within {self.timeout:g} s"
        )

    def fetch(self, expr: str) -> bytes:
        """The raw answer to one instant query, within the deadline and the size cap.

        urllib's timeout bounds each socket operation, not the whole answer, so a
        server trickling a byte at a time (headers or body) would hold it forever.
        The request runs in a daemon thread, which itself stops reading the body at
        the deadline, and we stop waiting for it at the deadline whatever it is
        blocked in."""
        url = f"{self.url}/api/v1/query"
        params = {"query": expr} | ({} if self.at is None else {"time": repr(self.at)})
        form = urllib.parse.urlencode(params).encode()
        deadline = time.monotonic() + self.timeout
        outcome: queue.SimpleQueue[bytes | DiagnoseError] = queue.SimpleQueue()

        def worker() -> None:
            try:
                outcome.put(self._post(url, form, deadline))
            except DiagnoseError as exc:
                outcome.put(exc)

        threading.Thread(target=worker, name="prometheus-query", daemon=True).start()
        try:
            answer = outcome.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            raise self.too_slow() from None
        if isinstance(answer, DiagnoseError):
            raise answer
        return answer

    def _post(self, url: str, form: bytes, deadline: float) -> bytes:
        """One HTTP POST, every failure turned into a DiagnoseError."""
        try:
            with urllib.request.urlopen(url, data=form, timeout=self.timeout) as response:
                return self._body(response, deadline)
        except DiagnoseError:
            raise
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(200).decode(errors="replace")
            except Exception:  # the error page itself unreadable: the status says enough
                detail = ""
            raise DiagnoseError(
                f"Prometheus at {self.url} refused a query ({exc.code}): {detail}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError, http.client.InvalidURL) as exc:
            reason = getattr(exc, "reason", exc)
            raise DiagnoseError(f"cannot reach Prometheus at {self.url}: {reason}") from None
        except http.client.HTTPException as exc:  # not HTTP, bad headers, cut short
            raise self.unreadable(f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:  # whatever else: still one line, exit 2
            raise DiagnoseError(
                f"query to Prometheus at {self.url} failed: {type(exc).__name__}: {exc}"
            ) from None

    def _body(self, response: http.client.HTTPResponse, deadline: float) -> bytes:
        """The body, read a chunk at a time so that the deadline and the cap hold."""
        declared = response.headers.get("Content-Length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
            raise self.unreadable(f"{declared} bytes announced, over the {self.max_bytes} limit")
        body = bytearray()
        while chunk := response.read1(_CHUNK):
            body += chunk
            if len(body) > self.max_bytes:
                raise self.unreadable(f"longer than the {self.max_bytes}-byte limit")
            if time.monotonic() > deadline:
                raise self.too_slow()
        if response.length:  # the server closed before Content-Length bytes
            raise self.unreadable(f"cut short, {response.length} bytes missing")
        return bytes(body)

    def read_answer(self, raw: bytes) -> list[dict[str, Any]]:
        """The result vector in a Prometheus answer; by_pair() checks each sample."""
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise self.unreadable(f"not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise self.unreadable(_wrong("the answer", body, "a JSON object"))
        if body.get("status") == "error":
            error = body.get("error")
            error = error[:200] if isinstance(error, str) else _SHOW.repr(error)
            raise DiagnoseError(f"Prometheus at {self.url} refused the query: {error}")
        if body.get("status") != "success":
            raise self.unreadable(_wrong("status", body.get("status"), '"success" or "error"'))
        data = body.get("data")
        if not isinstance(data, dict):
            raise self.unreadable(_wrong("data", data, "an object"))
        if data.get("resultType", "vector") != "vector":
            raise self.unreadable(_wrong("data.resultType", data["resultType"], '"vector"'))
        result = data.get("result")
        if not isinstance(result, list):
            raise self.unreadable(_wrong("data.result", result, "a list"))
        return result

    def _sample(
        self, index: int, sample: object, required: tuple[str, ...]
    ) -> tuple[dict[str, str], float]:
        """One sample's labels and value; query() may be overridden, so trust nothing."""
        if not isinstance(sample, dict):
            raise self.unreadable(_wrong(f"result[{index}]", sample, "an object"))
        metric = sample.get("metric")
        if not isinstance(metric, dict):
            raise self.unreadable(_wrong(f"result[{index}].metric", metric, "an object"))
        for key in required:
            name = metric.get(key)
            if not isinstance(name, str) or not name:  # Prometheus drops empty labels
                raise self.unreadable(_wrong(f"result[{index}].metric.{key}", name, "a node name"))
        labels = {k: v for k, v in metric.items() if isinstance(v, str)}
        value = sample.get("value")
        if not isinstance(value, list) or len(value) != 2:
            raise self.unreadable(_wrong(f"result[{index}].value", value, '[time, "number"]'))
        number = value[1]
        if isinstance(number, str | int | float) and not isinstance(number, bool):
            try:
                return labels, float(number)
            except (ValueError, OverflowError):  # "abc", or an integer past float range
                pass
        raise self.unreadable(_wrong(f"result[{index}].value[1]", number, "a number"))


# -- the rules, read from Prometheus or evaluated here -------------------------------

THRESHOLD = "node_ping:threshold:"
# The verdicts, in the order they are printed: node_ping:verdict:<kind>.
KINDS = (
    "partition",
    "node_unreachable",
    "ambiguous",
    "node_loss",
    "node_flicker",
    "node_outage",
    "agent_starved",
    "link_loss",
    "protocol_loss",
    "node_size_loss",
    "link_size_loss",
    "size_refused",
    "node_slow",
)
# Verdicts that qualify others (the direction STAMP places a loss on), not printed alone.
QUALIFIERS = ("node_loss_direction", "link_loss_direction")
# Per-node series the verdicts' wording needs.
DETAILS = (
    "node_ping:node_loss:ratio",
    "node_ping:node_own_loss:ratio",
    "node_ping:node_lossy_sources:ratio",
    "node_ping:node_dead_sources:ratio",
    "node_ping:node_flickering_sources:ratio",
    "node_ping:node_outage_sources:ratio",
    "node_ping:node_outage:mean_seconds",
    "node_ping:node_slow_sources:ratio",
    "node_ping:node_agent_skipped:ratio",
    "node_ping:node_agent_lag:seconds",
    "node_ping:node_loss_suspect:ratio",
    "node_ping:node_udp_only_sources:ratio",
    "node_ping:node_size_only_sources:ratio",
    "node_ping:node_large:bytes",
)
RULES_LOSS_WINDOW, RULES_OUTAGE_WINDOW = "the rules' loss window", "the rules' outage window"
_RECORDED = re.compile(r"(?<![\w:])node_ping:[a-z_]+:[a-z0-9_]+(?![\w:])")


class RuleSet:
    """The recording rules as expressions, each recorded name inside them replaced
    by its own expression: what Prometheus would record, asked in one query.

    Used where the rules are not loaded, or with another window, selector or
    thresholds than the loaded ones: the formulas stay the rules' own.

    A name already asked is replaced by its answer instead, written as a PromQL
    literal, wherever that is shorter: later rules read what earlier ones found, as
    in Prometheus, rather than evaluating them again (a verdict built on verdicts
    would otherwise expand into a query of hundreds of kilobytes). With the queries
    pinned to one instant (Prometheus.pin) the result is the same."""

    def __init__(self, config: dict[str, str], thresholds: dict[str, float]) -> None:
        groups = yaml.safe_load(rules.render(config))["groups"]
        self.exprs: dict[str, str] = {
            r["record"]: r["expr"].strip() for g in groups for r in g["rules"] if "record" in r
        }
        for name, value in thresholds.items():
            self.exprs[THRESHOLD + name] = f"vector({value!r})"
        self._answered: dict[str, str] = {}  # name -> its answer as a literal
        self._expanded: dict[str, str] = {}

    def expand(self, name: str) -> str:
        """``name``'s expression with no recorded name left in it."""
        if name in self._answered:
            return self._answered[name]
        if name not in self._expanded:
            self._expanded[name] = _RECORDED.sub(
                lambda m: f"({self.expand(m.group(0))})", self.exprs[name]
            )
        return self._expanded[name]

    def answered(self, name: str, series: list[Sample]) -> None:
        """What Prometheus answered for ``name``: later expansions use it if shorter.

        Written one series at a time and given up as soon as it is longer: a
        matrix of thousands of pairs is never written out only to be dropped."""
        room = len(self.expand(name))
        parts, length = [], -len(" or ")
        for part in literal_parts(series):
            length += len(" or ") + len(part)
            if length >= room:
                return
            parts.append(part)
        written = " or ".join(parts) or EMPTY_VECTOR
        if len(written) < room:
            self._answered[name] = written
            self._expanded.clear()  # expansions that hold the old expression


EMPTY_VECTOR = "vector(0) < 0"


def literal_parts(series: list[Sample]) -> Iterator[str]:
    """One PromQL expression per series, evaluating to it (``__name__`` aside)."""
    for labels, value in series:
        number = "NaN" if value != value else repr(value).replace("inf", "Inf")
        expr = f"vector({number})"
        for key, text in sorted(labels.items()):
            if key != "__name__":  # label_replace expands $1 in its replacement: $$ is $
                expr = (
                    f'label_replace({expr}, "{key}", {json.dumps(text.replace("$", "$$"))}, "", "")'
                )
        yield expr


def literal(series: list[Sample]) -> str:
    """PromQL that evaluates to exactly these series (``__name__`` aside)."""
    return " or ".join(literal_parts(series)) or EMPTY_VECTOR


def numbers(series: list[Sample]) -> list[Sample]:
    """The series whose value is a number: NaN (e.g. no replies to average) left out."""
    return [(labels, value) for labels, value in series if value == value]


def over(window: str) -> str:
    """ "the last 10m" for a duration; a described window as it is."""
    return f"the last {window}" if window[:1].isdigit() else window


def read_thresholds(prometheus: Prometheus) -> dict[str, float]:
    """The thresholds the loaded rules record (empty when the rules are not loaded)."""
    found = {}
    for labels, value in prometheus.samples(f'{{__name__=~"{THRESHOLD}.+"}}'):
        name = labels.get("__name__", "")
        if name.startswith(THRESHOLD):
            found[name.removeprefix(THRESHOLD)] = value
    return found


def diagnose(
    prometheus: Prometheus,
    window: str = "",
    selector: str | None = None,
    thresholds: dict[str, float] | None = None,
    config: dict[str, str] | None = None,
) -> Diagnosis:
    """The rules' verdicts, with the matrix and the details to word them.

    Read from the recorded series when Prometheus runs the rules and nothing else is
    asked; otherwise the same rules are evaluated here, over ``window`` (the loss
    window), on the series ``selector`` picks (all jobs by default), with the loaded
    thresholds and then ``thresholds`` over them; ``config`` sets any other of the
    rules' settings (the lab's shortened windows)."""
    with _gc_paused():
        prometheus.pin()
        loaded = read_thresholds(prometheus)
        defaults = rules.defaults() | (config or {})
        rule_set: RuleSet | None = None
        if loaded and not window and selector is None and not thresholds and config is None:
            source, used = "recording rules", loaded
            # The rules' own windows, whatever the chart set them to.
            window, outage_window = RULES_LOSS_WINDOW, RULES_OUTAGE_WINDOW
        else:
            settings = (config or {}) | {"seriesSelector": selector or ""}
            if window:
                settings["lossWindow"] = window
            window = window or defaults["lossWindow"]
            outage_window = defaults["outageWindow"]
            try:
                rule_set = RuleSet(settings, loaded | (thresholds or {}))
            except rules.RulesError as exc:
                raise DiagnoseError(str(exc)) from None
            used = {
                name.removeprefix(THRESHOLD): float(text[len("vector(") : -1])
                for name, text in rule_set.exprs.items()
                if name.startswith(THRESHOLD)
            }
            source = "the rules, evaluated by diagnose" + (
                " (Prometheus does not run them)" if not loaded else ""
            )

        def ask(name: str, *required: str) -> list[Sample]:
            """The series a rule records: read, or evaluated here and kept for later rules."""
            if rule_set is None:
                return prometheus.samples(name, *required)
            series = prometheus.series(rule_set.expand(name), *required)
            rule_set.answered(name, series)
            return numbers(series)

        def by_pair(name: str) -> dict[Pair, float]:
            return {
                (labels["source_node"], labels["destination_node"]): value
                for labels, value in ask(name, "source_node", "destination_node")
            }

        loss = by_pair("node_ping:pair_loss:ratio")
        if not loss:
            raise DiagnoseError(
                f"Prometheus at {prometheus.url} has no pair to judge over {over(window)}: "
                "are the agents scraped (or their textfiles read by node-exporter), and have "
                f"they measured for {defaults['establishedAfter']} (the rules judge pairs that "
                "old)?"
            )
        rtt = by_pair("node_ping:pair_rtt:mean_ms")
        nodes = sorted({n for pair in loss for n in pair})
        result = Diagnosis(window, source, nodes, _matrix(loss), _matrix(rtt), used)
        found = {kind: ask(f"node_ping:verdict:{kind}") for kind in (*KINDS, *QUALIFIERS)}
        details = {
            name: {labels["node"]: value for labels, value in ask(name, "node")} for name in DETAILS
        }
        latest = by_pair("node_ping:pair_loss:ratio_latest") if found["partition"] else {}
        words = Wording(loss, details, used, outage_window, latest, found)
        if found["link_size_loss"]:
            words.sizes = by_pair("node_ping:pair_large:bytes")
        if found["partition"]:
            for labels, _ in ask("node_ping:zone_pair:cut", "source_zone", "destination_zone"):
                words.cut_from[labels["source_zone"]].add(labels["destination_zone"])
        result.verdicts = [v for kind in KINDS for v in words.verdicts(kind, found[kind])]
        return result


def _matrix(values: dict[Pair, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (source, destination), value in sorted(values.items()):
        out.setdefault(source, {})[destination] = value
    return out


class Wording:
    """Verdict series in words, with the figures that back them."""

    def __init__(
        self,
        loss: dict[Pair, float],
        details: dict[str, dict[str, float]],
        thresholds: dict[str, float],
        outage_window: str,
        latest: dict[Pair, float],
        found: dict[str, list[tuple[dict[str, str], float]]] | None = None,
    ) -> None:
        found = found or {}
        self.loss = loss
        self.details = details
        self.thresholds = thresholds
        self.outage_window = outage_window
        self.latest = latest
        self.sources: defaultdict[str, int] = defaultdict(int)  # node -> sources measuring it
        for _, destination in loss:
            self.sources[destination] += 1
        # What STAMP adds: the way a node's loss is on, each lossy way of a link, and
        # the nodes whose loss is ICMP only.
        self.directions: defaultdict[str, dict[str, float]] = defaultdict(dict)
        for labels, value in found.get("node_loss_direction", []):
            self.directions[labels.get("node", "?")][labels.get("direction", "?")] = value
        self.ways = {
            (labels.get("from_node", "?"), labels.get("to_node", "?")): value
            for labels, value in found.get("link_loss_direction", [])
        }
        self.sizes: dict[Pair, float] = {}  # path-MTU probe sizes, when a link loses them
        self.cut_from: defaultdict[str, set[str]] = defaultdict(set)  # zone -> zones cut off
        self.icmp_only = {
            labels.get("node", "?")
            for labels, _ in found.get("protocol_loss", [])
            if labels.get("protocol") == "icmp"
        }

    def of(self, node: str, share_series: str) -> str:
        """ "k/n": the share recorded for ``node`` as a count of its sources."""
        total = self.sources.get(node, 0)
        share = self.details[share_series].get(node, 0.0)
        return f"{round(share * total)}/{total}"

    def own(self, node: str) -> str:
        """What the node's own probes (its row) lose, or that they are missing."""
        own = self.details["node_ping:node_own_loss:ratio"].get(node)
        return "its agent reports nothing" if own is None else f"{own:.0%} of its own probes lost"

    def verdicts(self, kind: str, samples: list[tuple[dict[str, str], float]]) -> list[Verdict]:
        if not samples:
            return []
        if kind == "partition":
            return [self.partition(samples)]
        if kind == "ambiguous":
            suspects = sorted(self.details["node_ping:node_loss_suspect:ratio"])
            names = ", ".join(suspects)
            return [
                Verdict(
                    kind,
                    names,
                    f"ambiguous: all {len(suspects)} nodes lose packets to most of the others "
                    f"and the matrix cannot tell which is at fault; candidates: {names} "
                    "(several faulty nodes, a shared part such as a switch or the overlay, or "
                    "too few nodes to tell)",
                )
            ]
        if kind == "link_loss":
            out = []
            for labels, ratio in sorted(samples, key=lambda s: sorted(s[0].items())):
                source, destination = (
                    labels.get("source_node", "?"),
                    labels.get("destination_node", "?"),
                )
                pair = f"{source} → {destination}"
                ways = sorted(
                    (w, r) for w, r in self.ways.items() if set(w) == {source, destination}
                )
                placed = "".join(f"; lost on the way {a} → {b} ({r:.0%})" for (a, b), r in ways)
                out.append(
                    Verdict(
                        kind, pair, f"{pair}: {ratio:.0%} loss, other paths clean (link){placed}"
                    )
                )
            return out
        if kind == "link_size_loss":
            out = []
            for labels, ratio in sorted(samples, key=lambda s: sorted(s[0].items())):
                ends = (labels.get("source_node", "?"), labels.get("destination_node", "?"))
                size = self.sizes.get(ends)
                of = f" {size:.0f}-byte" if size else ""
                path = f"{ends[0]} → {ends[1]}"
                text = (
                    f"large packets lost on {path} while small ones pass: "
                    f"{ratio:.0%} of its{of} path-MTU probes (a smaller MTU on that path)"
                )
                out.append(Verdict(kind, path, text))
            return out
        if kind == "protocol_loss":  # UDP only: ICMP-only loss qualifies node_loss instead
            samples = [(labels, v) for labels, v in samples if labels.get("protocol") == "udp"]
        out = []
        for labels, value in sorted(samples, key=lambda s: s[0].get("node", "")):
            node = labels.get("node", "?")
            out.append(Verdict(kind, node, self.node_text(kind, node, value)))
        return out

    def node_text(self, kind: str, node: str, value: float) -> str:
        details = self.details
        if kind == "node_unreachable":
            return (
                f"{node} is unreachable from {self.of(node, 'node_ping:node_dead_sources:ratio')} "
                f"nodes ({self.own(node)})"
            )
        if kind == "node_loss":
            mean = details["node_ping:node_loss:ratio"].get(node, 0.0)
            lossy = self.of(node, "node_ping:node_lossy_sources:ratio")
            figures = f"{mean:.0%} from {lossy} nodes, and {self.own(node)}"
            if node in self.icmp_only:
                return (
                    f"{node}: ICMP lost while UDP passes ({figures}): a policy or rate limit "
                    "on ICMP, not its link"
                )
            ways = self.directions.get(node)
            if ways:
                placed = " and ".join(
                    f"{ways[d]:.0%} of what {word}"
                    for d, word in (("in", "arrives"), ("out", "leaves"))
                    if d in ways
                )
                return f"{node} loses {placed} (echo: {figures})"
            return f"{node} or its link loses packets ({figures})"
        if kind == "node_size_loss":
            seen = self.of(node, "node_ping:node_size_only_sources:ratio")
            size = details["node_ping:node_large:bytes"].get(node)
            of = f" {size:.0f}-byte" if size else ""
            return (
                f"large packets lost at {node} while small ones pass: {value:.0%} of the{of} "
                f"path-MTU probes from {seen} nodes (an MTU black hole on its path)"
            )
        if kind == "size_refused":
            return (
                f"{node}'s kernel refuses {value:.0%} of its path-MTU probes: it knows a smaller "
                "path MTU (a route's mtu or a learnt one); nothing reached the wire, not loss"
            )
        if kind == "protocol_loss":
            seen = self.of(node, "node_ping:node_udp_only_sources:ratio")
            return (
                f"UDP lost at {node} while ICMP passes: {value:.0%} of STAMP packets from {seen} "
                "nodes (a firewall or policy on UDP, or its reflector refuses them)"
            )
        if kind in ("node_flicker", "node_outage"):
            mean_s = details["node_ping:node_outage:mean_seconds"].get(node)
            length = f", {mean_s:.0f} s on average" if mean_s is not None else ""
            if kind == "node_flicker":
                times = self.thresholds.get("flicker_outages", 2)
                seen = self.of(node, "node_ping:node_flickering_sources:ratio")
                return (
                    f"{node} flickers: {seen} nodes saw it vanish and come back {times:g}+ times "
                    f"in {over(self.outage_window)}{length}"
                )
            seen = self.of(node, "node_ping:node_outage_sources:ratio")
            return (
                f"{node} had an outage: {seen} nodes saw it vanish and come back in "
                f"{over(self.outage_window)}{length}"
            )
        if kind == "agent_starved":
            lag = details["node_ping:node_agent_lag:seconds"].get(node, 0.0)
            return (
                f"agent on {node} starved: {value:.0%} of its probes skipped, loop lag up to "
                f"{lag:.1f} s; its own measurements are not evidence of packet loss"
            )
        seen = self.of(node, "node_ping:node_slow_sources:ratio")  # node_slow
        return f"{node}: slow, mean RTT {value:.1f} ms from {seen} sources"

    def partition(self, samples: list[tuple[dict[str, str], float]]) -> Verdict:
        """The sides: partition nodes joined by every pair that is not dead right now,
        and by their zone when it is cut from another (on a sample, nodes of one zone
        need not probe each other) — unless the node reaches a zone its zone is cut
        from: a cut through a zone leaves some of its nodes on the other side."""
        unreachable = self.thresholds.get("pair_unreachable_ratio", 0.95)
        zones = {labels.get("node", "?"): labels.get("zone", "") for labels, _ in samples}
        side = {node: node for node in zones}  # union-find parents

        def root(node: str) -> str:
            while side[node] != node:
                side[node] = side[side[node]]
                node = side[node]
            return node

        across: set[str] = set()  # nodes alive to a zone their zone is cut from
        for (source, destination), ratio in self.latest.items():
            if source in side and destination in side and ratio <= unreachable:
                side[root(source)] = root(destination)
                for node, other in ((source, destination), (destination, source)):
                    if zones[other] in self.cut_from.get(zones[node], ()):
                        across.add(node)
        first_of_zone: dict[str, str] = {}
        for node, zone in zones.items():
            if self.cut_from.get(zone) and node not in across:
                side[root(node)] = root(first_of_zone.setdefault(zone, node))
        groups: defaultdict[str, list[str]] = defaultdict(list)
        for node in sorted(zones):
            groups[root(node)].append(node)
        ordered = sorted(groups.values(), key=lambda g: (len(g), g))
        parts = []
        for group in ordered:
            in_zones = sorted({zones[n] for n in group if zones[n]})
            parts.append(", ".join(group) + (f" ({', '.join(in_zones)})" if in_zones else ""))
        subject = " | ".join(", ".join(g) for g in ordered)
        return Verdict(
            "partition",
            subject,
            "partition: " + " | ".join(parts) + " reach their own side and nothing across",
        )


def render_matrix(diagnosis: Diagnosis) -> str:
    """The loss matrix as text; node names escaped (label values: see visible())."""
    nodes = diagnosis.nodes
    names = [visible(n) for n in nodes]
    width = max([len(n) for n in names] + [6]) + 2
    lines = [
        f"packet loss % over {over(diagnosis.window)} (rows: source, columns: "
        f"destination; from {diagnosis.source})",
        " " * width + "".join(f"{n:>{width}}" for n in names),
    ]
    for source, name in zip(nodes, names, strict=True):
        row = diagnosis.loss.get(source, {})
        cells = [
            "-" if source == d else f"{row[d] * 100:.1f}" if d in row else "n/a" for d in nodes
        ]
        lines.append(f"{name:<{width}}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def render_text(diagnosis: Diagnosis) -> str:
    """Matrix and verdicts for a terminal: every line escaped, as node names are in them."""
    lines = [render_matrix(diagnosis), ""]
    if diagnosis.verdicts:
        lines += [visible(v.text) for v in diagnosis.verdicts]
    else:
        lines.append(f"no problem found over {over(diagnosis.window)}")
    return "\n".join(lines)


def render_json(diagnosis: Diagnosis) -> str:
    """Everything, for scripts; json.dumps escapes control characters in names itself.

    Same as json.dumps(asdict(diagnosis)), without asdict's deep copy of the matrices
    (most of the time at 500 nodes)."""
    out = {f.name: getattr(diagnosis, f.name) for f in fields(diagnosis)}
    out["verdicts"] = [asdict(v) for v in diagnosis.verdicts]
    with _gc_paused():
        return json.dumps(out | {"problem": diagnosis.problem}, indent=2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"node-ping-exporter diagnose: {visible(message)}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> int:
    parser = _Parser(prog="node-ping-exporter diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument(
        "--window",
        default="",
        help="evaluate the rules over this loss window (a Prometheus duration) instead of "
        "reading what they recorded",
    )
    parser.add_argument("--output", choices=["text", "json"], default="text")
    parser.add_argument(
        "--selector",
        default=None,
        help='label matchers for the agents\' series, e.g. job="node-exporter" (textfile '
        "mode); the rules are then evaluated here (default: what they recorded, or every job)",
    )
    parser.add_argument(
        "--loss-threshold", type=float, default=None, help="pair loss ratio threshold"
    )
    parser.add_argument("--rtt-threshold-ms", type=float, default=None)
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"for the whole answer to each query (default {DEFAULT_TIMEOUT_S:g})",
    )
    args = parser.parse_args(argv)
    if args.window and not rules.DURATION.fullmatch(args.window):
        parser.error(f"argument --window: '{args.window}' is not a Prometheus duration (e.g. 10m)")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        parser.error(f"argument --timeout: {args.timeout:g} is not a positive number of seconds")
    thresholds: dict[str, float] = {}
    if args.loss_threshold is not None:
        if not 0 <= args.loss_threshold < 1:  # NaN fails too: every comparison would be false
            parser.error(f"argument --loss-threshold: {args.loss_threshold:g} is not in [0, 1)")
        thresholds["pair_loss_ratio"] = args.loss_threshold
    if args.rtt_threshold_ms is not None:
        if not (args.rtt_threshold_ms >= 0 and math.isfinite(args.rtt_threshold_ms)):
            parser.error(
                f"argument --rtt-threshold-ms: {args.rtt_threshold_ms:g} is not a number of ms"
            )
        thresholds["rtt_ms"] = args.rtt_threshold_ms
    if args.selector is not None and any(c in args.selector for c in "{}\n"):
        parser.error(
            f"argument --selector: give the label matchers without braces (got {args.selector!r})"
        )
    url = urllib.parse.urlsplit(args.prometheus)
    if url.scheme not in ("http", "https") or not url.netloc:
        parser.error(f"argument --prometheus: '{args.prometheus}' is not an http(s) URL")
    try:
        result = diagnose(
            Prometheus(args.prometheus, timeout=args.timeout),
            args.window,
            args.selector,
            thresholds,
        )
    except DiagnoseError as exc:
        print(f"node-ping-exporter diagnose: {visible(str(exc))}", file=sys.stderr)
        return 2
    print(render_json(result) if args.output == "json" else render_text(result))
    return 1 if result.problem else 0
