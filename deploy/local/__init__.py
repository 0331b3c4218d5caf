"""What a Kubernetes cluster would hold, on 127.0.0.1: gateway replicas behind haproxy, PostgreSQL as the
state store, an S3 API for the registry and the shadow log, and a Prometheus scraping the replicas.

Each concern is a module (s3, postgres, prometheus, haproxy, replicas); `topology.Topology` starts them
in order and stops them all. Real servers throughout: the tests that use it prove what a cluster would
do, and `python -m deploy.local` lets a person try it.
"""
