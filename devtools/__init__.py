"""Developer and test tooling, run from a checkout and never installed.

Nothing here ships: not in the wheel (pyproject.toml's package list leaves
``devtools`` out) and not in the service image (the Dockerfile's service
stage copies only domain/, adapters/, consumers/ and schemas/; its
``devtools`` stage adds this folder for the compose simulator). The service
never imports from here; tests/unit/test_architecture.py checks that.

* ``devtools.kafka_local``: real Kafka brokers from Maven Central jars
  (reads tools/kafka/pom.xml, caches under .cache/kafka).
* ``devtools.simulator``: the WeChat simulator (a real HTTP server).
* ``devtools.demo``: everything locally, end to end.
* ``devtools.diagram``: the lifecycle diagram in docs/ and README.md.

``python -m devtools COMMAND`` runs them; ``./dev`` calls it.
"""
