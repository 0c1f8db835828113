"""Who may read ``/metrics``: bearer tokens checked against the Kubernetes API server.

The same check kube-rbac-proxy makes, built in: a TokenReview says who the
caller is, a SubjectAccessReview whether that identity may ``get`` the
non-resource URL (``/metrics``), so access is granted with ordinary RBAC
(kube-prometheus-stack's Prometheus already holds ``nonResourceURLs:
["/metrics"], verbs: ["get"]``). The agent's own ServiceAccount needs
``system:auth-delegator`` (create tokenreviews and subjectaccessreviews).

Answers are cached per token (by its SHA-256, never the token itself): a
minute when allowed, ten seconds otherwise, in two bounded tables, so a scrape
every few seconds costs the API server two reviews a minute and made-up tokens
can never push the scraper's answer out. At most REVIEWS_AT_ONCE reviews run
at a time; beyond that, and whenever the API server cannot be asked, the
request is refused (503): a flood of made-up tokens cannot drive the API
server, and nothing is ever open on failure.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .discovery.kubernetes import describe_api_error
from .kubeapi import Api
from .logs import Throttle

log = logging.getLogger(__name__)

ALLOWED_CACHE_SECONDS = 60.0
DENIED_CACHE_SECONDS = 10.0
CACHE_ENTRIES = 4096
REVIEWS_AT_ONCE = 4
WARN_EVERY_SECONDS = 10.0
CANNOT_CHECK = "cannot check a token with the API server"
REVIEW_TIMEOUT_SECONDS = 5.0

# (HTTP status, reason): 200 allowed, 401 unauthenticated, 403 forbidden, 503 cannot check
Decision = tuple[int, str]
RESULTS = {200: "allowed", 401: "unauthenticated", 403: "forbidden", 503: "unavailable"}


class KubernetesAuthorizer:
    def __init__(
        self,
        api: Api,
        audiences: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._audiences = audiences or None
        self._clock = clock
        # Allowed and refused answers apart: refusals cannot evict an allowed answer.
        self._allowed: OrderedDict[bytes, tuple[float, Decision]] = OrderedDict()
        self._refused: OrderedDict[bytes, tuple[float, Decision]] = OrderedDict()
        self._lock = threading.Lock()
        self._reviewing = threading.BoundedSemaphore(REVIEWS_AT_ONCE)
        self._warnings = Throttle(log, WARN_EVERY_SECONDS)  # clients decide how often
        self.reviews = 0  # API calls made, for tests and the curious
        self.decisions = {status: 0 for status in RESULTS}  # answers by HTTP status

    def check(self, authorization: str | None, path: str) -> Decision:
        """Decide on one request from its Authorization header and path."""
        decision = self._decide(authorization, path)
        self.decisions[decision[0]] += 1
        return decision

    def _decide(self, authorization: str | None, path: str) -> Decision:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401, "a bearer token is required"
        key = hashlib.sha256(f"{path}\x00{token}".encode(errors="replace")).digest()
        now = self._clock()
        with self._lock:
            for cache in (self._allowed, self._refused):
                cached = cache.get(key)
                if cached is not None and cached[0] > now:
                    return cached[1]
        if not self._reviewing.acquire(blocking=False):
            self._warnings.log(
                logging.WARNING, "busy", CANNOT_CHECK, problem="too many token checks at once"
            )
            return 503, "too many token checks at once"
        try:
            decision = self._review(token, path)
        finally:
            self._reviewing.release()
        if decision[0] == 503:
            return decision  # not cached: ask again next time
        allowed = decision[0] == 200
        cache = self._allowed if allowed else self._refused
        ttl = ALLOWED_CACHE_SECONDS if allowed else DENIED_CACHE_SECONDS
        with self._lock:
            cache[key] = (now + ttl, decision)
            cache.move_to_end(key)
            while len(cache) > CACHE_ENTRIES:
                cache.popitem(last=False)
        return decision

    def _review(self, token: str, path: str) -> Decision:
        try:
            self.reviews += 1
            spec: dict[str, Any] = {"token": token}
            if self._audiences:
                spec["audiences"] = self._audiences
            review = self._api.post_json(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec},
                REVIEW_TIMEOUT_SECONDS,
            )
            status = review.get("status") or {}
            user = status.get("user") if status.get("authenticated") else None
            if not user:
                return 401, "token not accepted by the API server"
            self.reviews += 1
            access = self._api.post_json(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                {
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SubjectAccessReview",
                    "spec": {
                        "user": user.get("username"),
                        "groups": user.get("groups"),
                        "uid": user.get("uid"),
                        "extra": user.get("extra"),
                        "nonResourceAttributes": {"path": path, "verb": "get"},
                    },
                },
                REVIEW_TIMEOUT_SECONDS,
            )
        except Exception as exc:  # API server away, RBAC missing: refuse, say why
            self._warnings.log(
                logging.WARNING, "api", CANNOT_CHECK, problem=describe_api_error(exc)
            )
            return 503, "cannot check the token now"
        if (access.get("status") or {}).get("allowed"):
            return 200, "ok"
        return 403, f"{user.get('username')} may not get {path}"
