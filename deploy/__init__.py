"""Deployment: Kubernetes manifests (base/, components/, overlays/) and `deploy.local`, the same topology
started as child processes on one machine for tests and for trying it out."""
