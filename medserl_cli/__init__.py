"""The ``medserl`` command: the CLI layer. It knows every service (``registry``), runs the embedded
pipeline (``pipeline``, ``report``) and the local Kafka broker for tests and benches (``kafka_local``)."""
