# node-ping-exporter: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
LISTEN ?= 127.0.0.1:9798

.PHONY: run test deps lint typecheck e2e test-kube controlplane controlplane-down cluster \
	cluster-down demo bench bench-prometheus accuracy accuracy-sampled \
	image publish chart-readme sync-chart clean

# The agent, and the lab as a distribution of its own (lab/pyproject.toml): two
# installs, so that the agent's never carries the lab's commands.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml lab/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e ./lab
	touch $@

.cache/system-deps: scripts/install-system-deps.sh
	scripts/install-system-deps.sh
	mkdir -p .cache && touch $@

# Helm 3, Helm 4 and the chart linter, built from the Go module proxy once.
.cache/tools: scripts/install-tools.sh
	scripts/install-tools.sh
	touch $@

# kube-apiserver and kube-controller-manager built from the k8s.io/kubernetes Go
# module (controlplane/go.mod) and etcd, once per machine: about 9 minutes cold.
.cache/controlplane.stamp: scripts/build-controlplane.sh controlplane/go.mod controlplane/go.sum
	scripts/build-controlplane.sh
	touch $@

# containerd, pause and prometheus-operator for the lab's Kubernetes nodes (the
# kubelet is built with the control plane), once per machine: about 5 minutes cold.
.cache/nodes.stamp: scripts/build-nodes.sh controlplane/go.mod controlplane/operator/go.mod \
		controlplane/operator/go.sum
	scripts/build-nodes.sh
	touch $@

deps: $(VENV)/.installed .cache/system-deps .cache/tools .cache/controlplane.stamp .cache/nodes.stamp

# The chart carries copies of rules/ and dashboards/ (Helm reads only its own files).
sync-chart:
	rm -rf chart/rules chart/dashboards
	mkdir -p chart/rules && cp exporter/rules/node-ping.rules.yml chart/rules/
	cp -r dashboards chart/dashboards

# The agent on a built-in default: three loopback peers, /metrics on localhost.
run: $(VENV)/.installed
	$(PY) -m exporter --node-name local --listen-address $(LISTEN) \
	  --peer loopback-1=127.0.0.1 --peer loopback-2=127.0.0.2 --peer loopback-ipv6=::1

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	@if command -v go >/dev/null 2>&1; then \
	  test -z "$$(gofmt -l benchmarks/responder)" || { gofmt -l benchmarks/responder; exit 1; }; \
	  cd benchmarks/responder && go vet ./...; \
	fi

typecheck: $(VENV)/.installed
	$(PY) -m mypy

# Every test: lint, types, unit, and (as root) real ICMP in network namespaces.
test: deps lint typecheck
	$(PY) -m pytest

# Only the cluster-lab end-to-end checks (root; part of `make test` too).
e2e: deps
	$(PY) -m pytest -m e2e

# Only the checks against a real control plane: helm install/upgrade/uninstall,
# RBAC, the DaemonSet controller, the lab in Kubernetes-discovery mode (root).
test-kube: deps
	$(PY) -m pytest tests/test_kube_chart.py tests/test_kube_chart_discovery.py tests/test_kube_lab.py \
	  tests/test_kube_auth.py

# A control plane to try things by hand (node-ping-lab up --kubernetes uses it);
# prints where its admin kubeconfig is. `make controlplane-down` removes it.
controlplane: deps
	$(PY) -m lab.controlplane up

controlplane-down: $(VENV)/.installed
	$(PY) -m lab.controlplane down

# Three lab nodes that are Kubernetes nodes (kubelet + containerd each), the chart's
# DaemonSet on them, prometheus-operator and its Prometheus on node-1 (root; see
# docs/cluster.md). `make cluster-down` removes it all.
cluster: deps
	$(PY) -m lab.controlplane --name cluster up
	$(PY) -m lab.cli --name cluster up --nodes 3 --kubernetes cluster --kubelets

cluster-down: $(VENV)/.installed
	$(PY) -m lab.cli --name cluster down
	$(PY) -m lab.controlplane --name cluster down

# A 4-node lab with Prometheus, one fault, the loss matrix (root; about a minute).
demo: deps
	$(PY) -m lab.cli demo

bench: deps
	$(PY) -m benchmarks.bench

# What Prometheus pays at 50, 300 and 1000 nodes: a real Prometheus scraping simulated
# nodes (loopback only; about half an hour): the table of docs/sizing.md.
bench-prometheus: deps
	$(PY) -m benchmarks.prom_sizing

# Every lab fault with the shipped rules at a 30 s scrape, and a clean run with churn
# (root; about an hour): the table of docs/accuracy.md.
accuracy: deps
	$(PY) -m benchmarks.accuracy

# The same faults on a sampled lab (12 nodes, --max-peers 3), lab-sized windows
# (root; about half an hour): the sampled table of docs/sizing.md.
accuracy-sampled: deps
	$(PY) -m benchmarks.accuracy --sampled --fast --labs 1 --clean-minutes 5

# The container images (amd64 and arm64, one manifest list), built with buildah
# from Debian packages and wheels (root).
image:
	scripts/build-image.sh

# The release on this machine: images, chart (OCI and a chart repository), cosign
# signatures and SBOMs, served on loopback until interrupted (root).
publish: deps
	$(PY) -m lab.cli publish $(or $(DIR),.cache/release)

# chart/README.md from README.md.gotmpl and values.yaml's comments (helm-docs; the
# same arguments as tests/test_chart.py's up-to-date check).
chart-readme: .cache/tools
	.cache/bin/helm-docs -c chart -s file --skip-version-footer

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache *.egg-info
