"""node-ping-exporter: per-peer ICMP loss and RTT between Kubernetes nodes."""

__version__ = "0.1.0"
