"""Who may read ``/metrics``: bearer tokens checked against the Kubernetes API server.

The same check kube-rbac-proxy makes, built in: a TokenReview says who the
caller is, a SubjectAccessReview whether that identity may ``get`` the
non-resource URL (``/metrics``), so access is granted with ordinary RBAC
(kube-prometheus-stack's Prometheus already holds ``nonResourceURLs:
["/metrics"], verbs: ["get"]``). The agent's own ServiceAccount needs
``system:auth-delegator`` (create tokenreviews and subjectaccessreviews).

Answers are cached per token (by its SHA-256, never the token itself) for a
minute when allowed and ten seconds otherwise, in a bounded table, so a scrape
every few seconds costs the API server two reviews a minute and a flood of
made-up tokens costs it at most one review per token. If the API server cannot
be asked, the request is refused (503): never open on failure.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

ALLOWED_CACHE_SECONDS = 60.0
DENIED_CACHE_SECONDS = 10.0
CACHE_ENTRIES = 4096
REVIEW_TIMEOUT_SECONDS = 5.0

# (HTTP status, reason): 200 allowed, 401 unauthenticated, 403 forbidden, 503 cannot check
Decision = tuple[int, str]


class KubernetesAuthorizer:
    def __init__(
        self,
        api_client: Any,
        audiences: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self._client = client
        self._audiences = audiences or None
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Decision]] = OrderedDict()
        self._lock = threading.Lock()
        self.reviews = 0  # API calls made, for tests and the curious

    def check(self, authorization: str | None, path: str) -> Decision:
        """Decide on one request from its Authorization header and path."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401, "a bearer token is required"
        key = hashlib.sha256(f"{path}\x00{token}".encode(errors="replace")).digest()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        decision = self._review(token, path)
        if decision[0] == 503:
            return decision  # not cached: ask again next time
        ttl = ALLOWED_CACHE_SECONDS if decision[0] == 200 else DENIED_CACHE_SECONDS
        with self._lock:
            self._cache[key] = (now + ttl, decision)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return decision

    def _review(self, token: str, path: str) -> Decision:
        c = self._client
        try:
            self.reviews += 1
            review = self._authn.create_token_review(
                c.V1TokenReview(spec=c.V1TokenReviewSpec(token=token, audiences=self._audiences)),
                _request_timeout=REVIEW_TIMEOUT_SECONDS,
            )
            status = review.status
            user = status.user if status and status.authenticated else None
            if user is None:
                return 401, "token not accepted by the API server"
            self.reviews += 1
            access = self._authz.create_subject_access_review(
                c.V1SubjectAccessReview(
                    spec=c.V1SubjectAccessReviewSpec(
                        user=user.username,
                        groups=user.groups,
                        uid=user.uid,
                        extra=user.extra,
                        non_resource_attributes=c.V1NonResourceAttributes(path=path, verb="get"),
                    )
                ),
                _request_timeout=REVIEW_TIMEOUT_SECONDS,
            )
        except Exception as exc:  # API server away, RBAC missing: refuse, say why once
            log.warning(
                "cannot check a token with the API server", extra={"problem": _describe(exc)}
            )
            return 503, "cannot check the token now"
        if access.status and access.status.allowed:
            return 200, "ok"
        return 403, f"{user.username} may not get {path}"


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return (
        f"API error {status}: {getattr(exc, 'reason', '')}"
        if status
        else f"{type(exc).__name__}: {exc}"
    )
